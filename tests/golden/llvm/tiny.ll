; graphc VERSION llvm backend: graph llvm_tiny
; 6 nodes, 3 kernels, workspace 64 B, parameter store 128 B, buffers {'input': 1, 'state': 2, 'ws': 2, 'out': 1}
; entry: int32_t graphc_tiny(uint8_t *state, uint8_t *workspace, void *const *inputs, void *const *outputs, int64_t *status, uint32_t *rng)
; ModuleID = "llvm_tiny"
target triple = "unknown-unknown-unknown"
target datalayout = ""

define i32 @"graphc_tiny"(i8* captures(none) noalias %"state", i8* captures(none) noalias %"workspace", i8** captures(none) noalias %"inputs", i8** captures(none) noalias %"outputs", i64* captures(none) noalias %"status", i32* captures(none) noalias %"rng")
{
entry:
  %".9" = getelementptr inbounds i8*, i8** %"inputs", i64 0
  %"v0.addr" = load i8*, i8** %".9"
  %"v0" = bitcast i8* %"v0.addr" to float*
  %"a2_0" = alloca float
  %".13" = getelementptr inbounds i8, i8* %"state", i64 0
  %"P1" = bitcast i8* %".13" to float*
  %"a2_1" = alloca float
  %".17" = getelementptr inbounds i8, i8* %"workspace", i64 0
  %"V2" = bitcast i8* %".17" to float*
  %"a3_0" = alloca float
  %".30" = getelementptr inbounds i8, i8* %"workspace", i64 0
  %"V3" = bitcast i8* %".30" to float*
  %"a5_0" = alloca float
  %".44" = getelementptr inbounds i8*, i8** %"outputs", i64 0
  %"o0.addr" = load i8*, i8** %".44"
  %"o0" = bitcast i8* %"o0.addr" to float*
  br label %"k2_mul"
; %2 mul  test_llvm_render.py:LINE
k2_mul:
  br label %"i0.loop"
i0.loop:
  %"i0" = phi  i64 [0, %"k2_mul"], [%"i0.next", %"i0.loop"]
  %".10" = getelementptr inbounds float, float* %"v0", i64 %"i0"
  %".11" = load float, float* %".10"
  store float %".11", float* %"a2_0"
  %".14" = getelementptr inbounds float, float* %"P1", i64 %"i0"
  %".15" = load float, float* %".14"
  store float %".15", float* %"a2_1"
  %".18" = getelementptr inbounds float, float* %"V2", i64 %"i0"
  %".19" = load float, float* %"a2_0"
  %".20" = load float, float* %"a2_1"
  %".21" = fmul float %".19", %".20"
  store float %".21", float* %".18"
  %"i0.next" = add nuw nsw i64 %"i0", 1
  %".23" = icmp slt i64 %"i0.next", 4
  br i1 %".23", label %"i0.loop", label %"i0.end"
i0.end:
  br label %"k3_relu"
; %3 relu  test_llvm_render.py:LINE
k3_relu:
  br label %"i0.loop.1"
i0.loop.1:
  %"i0.1" = phi  i64 [0, %"k3_relu"], [%"i0.next.1", %"i0.loop.1"]
  %".27" = getelementptr inbounds float, float* %"V2", i64 %"i0.1"
  %".28" = load float, float* %".27"
  store float %".28", float* %"a3_0"
  %".31" = getelementptr inbounds float, float* %"V3", i64 %"i0.1"
  %".32" = load float, float* %"a3_0"
  %".33" = load float, float* %"a3_0"
  %".34" = fcmp ole float %".33",              0x0
  %".35" = select  i1 %".34", float              0x0, float %".32"
  store float %".35", float* %".31"
  %"i0.next.1" = add nuw nsw i64 %"i0.1", 1
  %".37" = icmp slt i64 %"i0.next.1", 4
  br i1 %".37", label %"i0.loop.1", label %"i0.end.1"
i0.end.1:
  br label %"k5_add"
; %5 add  test_llvm_render.py:LINE
k5_add:
  br label %"i0.loop.2"
i0.loop.2:
  %"i0.2" = phi  i64 [0, %"k5_add"], [%"i0.next.2", %"i0.loop.2"]
  %".41" = getelementptr inbounds float, float* %"V3", i64 %"i0.2"
  %".42" = load float, float* %".41"
  store float %".42", float* %"a5_0"
  %".45" = getelementptr inbounds float, float* %"o0", i64 %"i0.2"
  %".46" = load float, float* %"a5_0"
  %".47" = fadd float %".46", 0x3ff0000000000000
  store float %".47", float* %".45"
  %"i0.next.2" = add nuw nsw i64 %"i0.2", 1
  %".49" = icmp slt i64 %"i0.next.2", 4
  br i1 %".49", label %"i0.loop.2", label %"i0.end.2"
i0.end.2:
  br label %"done"
done:
  ret i32 0
}

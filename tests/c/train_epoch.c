/* An epoch of training through an exported model's C API (tests/test_export.py compiles and runs it).
 *
 *   cc -DLIB=digits -DLIBUP=DIGITS -DMETRIC=1 train_epoch.c -I<dir> -L<dir> -ldigits -o train_epoch
 *   ./train_epoch STEPS BATCHES.bin LOSSES.bin WEIGHTS_OUT
 *
 * BATCHES.bin holds, for each step, the step's x, y and lr as raw C-order arrays of the entry's dtypes
 * (written by the test in its minibatch order); LOSSES.bin receives each step's loss; the trained
 * parameters are saved with LIB_save_weights.
 */
#include <stdio.h>
#include <stdlib.h>

#define STR_(x) #x
#define STR(x) STR_(x)
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#include STR(LIB.h)

#define API(f) CAT(LIB, CAT(_, f))      /* API(step) -> digits_step */
#define DEF(m) CAT(LIBUP, CAT(_STEP_, m)) /* DEF(X_SIZE) -> DIGITS_STEP_X_SIZE */

typedef DEF(X_TYPE) x_t;
typedef DEF(Y_TYPE) y_t;
typedef DEF(LR_TYPE) lr_t;
typedef DEF(LOSS_TYPE) loss_t;

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s STEPS BATCHES.bin LOSSES.bin WEIGHTS_OUT\n", argv[0]);
        return 2;
    }
    int steps = atoi(argv[1]);
    static x_t x[DEF(X_SIZE)];
    static y_t y[DEF(Y_SIZE)];
    lr_t lr;
    loss_t loss, metric;
    FILE *batches = fopen(argv[2], "rb"), *losses = fopen(argv[3], "wb");
    if (!batches || !losses) return 3;
    API(state) *st;
    if (API(create)(&st) != CAT(LIBUP, _OK)) return 4;
    for (int s = 0; s < steps; s++) {
        if (fread(x, sizeof x, 1, batches) != 1 || fread(y, sizeof y, 1, batches) != 1 ||
            fread(&lr, sizeof lr, 1, batches) != 1) {
            fprintf(stderr, "step %d: cannot read the batch\n", s);
            return 5;
        }
#if METRIC /* -DMETRIC=1: the step has a metric's total after the loss (accuracy, for a classification loss) */
        int rc = API(step)(st, x, y, lr, &loss, &metric);
#else
        int rc = API(step)(st, x, y, lr, &loss);
        (void)metric;
#endif
        if (rc != CAT(LIBUP, _OK)) {
            fprintf(stderr, "step %d: error %d: %s\n", s, rc, API(error_message)(st));
            return 6;
        }
        fwrite(&loss, sizeof loss, 1, losses);
    }
    fclose(batches);
    fclose(losses);
    if (API(save_weights)(st, argv[4]) != CAT(LIBUP, _OK)) {
        fprintf(stderr, "%s\n", API(error_message)(st));
        return 7;
    }
    API(destroy)(st);
    return 0;
}

/* The build's pass per value for a BF16 pair: widen, permute, extrapolate, and the largest magnitude, in one loop.

   Called by convert/fused.py. Each stored pair of bf16 values is read once and the float32 result
   written once, with the numpy path's operations in the same order (convert/extrapolate.py): the
   bf16 rounding is the same integer arithmetic as ``_round_bits``, the float32 formula the same
   two products and one difference as ``extrapolate``. Built without fast-math and without
   contraction (setup.py passes -ffp-contract=off), so no multiply-add is fused and nothing is
   reordered: tests/test_build_fused.py checks every bit against the numpy functions.

   The loop returns the results' largest magnitude as float32 bits (a NaN's bits are above
   infinity's), an integer maximum the compiler vectorises: the caller refuses a NaN or Inf, and a
   finite value too large for an output type (F16 above 65504, a Q8_0 scale), from this one number. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../_kernels.h"

static inline float widen(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* round to the nearest bfloat16, ties to even, kept as float32 (extrapolate._round_bits) */
static inline float round_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

static inline uint32_t magnitude(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7FFFFFFFu;
}

CLONES static uint32_t expo_rows(const uint16_t *restrict rlhf, const uint16_t *restrict sft, const int64_t *src,
                            Py_ssize_t rows, Py_ssize_t cols, float a, int bf16, float *restrict out) {
    const float one_plus = 1.0f + a;
    uint32_t top = 0;
    for (Py_ssize_t row = 0; row < rows; row++) {
        const uint16_t *r = rlhf + src[row] * cols, *s = sft + src[row] * cols;
        float *o = out + row * cols;
        if (bf16) { /* dpo + alpha * (dpo - sft), each operation rounded to bf16 */
            for (Py_ssize_t c = 0; c < cols; c++) {
                float rv = widen(r[c]), v = round_bf16(rv + round_bf16(round_bf16(rv - widen(s[c])) * a));
                const uint32_t m = magnitude(v);
                o[c] = v;
                top = m > top ? m : top;
            }
        } else { /* (1 + alpha) * rlhf - alpha * sft in float32 */
            for (Py_ssize_t c = 0; c < cols; c++) {
                float v = widen(r[c]) * one_plus - widen(s[c]) * a;
                const uint32_t m = magnitude(v);
                o[c] = v;
                top = m > top ? m : top;
            }
        }
    }
    return top;
}

PyDoc_STRVAR(expo_bf16_doc,
             "expo_bf16(rlhf, sft, src, cols, alpha, bf16, out) -> int\n\n"
             "Stored bf16 rows (uint16 buffers, rows x cols) -> float32 results in out, row i from stored\n"
             "row src[i] (int64); returns the largest |result| as float32 bits (above 0x7F800000: a NaN).");

static PyObject *expo_bf16(PyObject *self, PyObject *args) {
    Py_buffer r, s, src, out;
    Py_ssize_t cols;
    double alpha;
    int bf16;
    if (!PyArg_ParseTuple(args, "y*y*y*ndpw*", &r, &s, &src, &cols, &alpha, &bf16, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t rows = src.len / (Py_ssize_t)sizeof(int64_t);
    if (cols <= 0 || r.len != s.len || src.len % sizeof(int64_t) || rows * cols * 2 != r.len ||
        out.len < rows * cols * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "expo_bf16: buffer sizes do not match rows x cols");
        goto done;
    }
    const int64_t *rowsrc = src.buf;
    for (Py_ssize_t i = 0; i < rows; i++) {
        if (rowsrc[i] < 0 || rowsrc[i] >= rows) {
            PyErr_SetString(PyExc_ValueError, "expo_bf16: a source row is out of range");
            goto done;
        }
    }
    uint32_t top;
    Py_BEGIN_ALLOW_THREADS
    top = expo_rows(r.buf, s.buf, rowsrc, rows, cols, (float)alpha, bf16, out.buf);
    Py_END_ALLOW_THREADS
    result = PyLong_FromUnsignedLong(top);
done:
    PyBuffer_Release(&r);
    PyBuffer_Release(&s);
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"expo_bf16", expo_bf16, METH_VARARGS, expo_bf16_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", "The build's compiled pass per value.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }

/* Q8_0 in one pass per block: the reference arithmetic of quant/q8_0.py, compiled.

   ggml's quantize_row_q8_0_ref per block of 32: d = amax / 127, id = d ? 1/d : 0, q = roundf(x * id),
   ties away from zero. Here roundf is trunc(|x| * id + 0.49999997f) with the sign put back, exactly
   as the numpy quantizer does; a subnormal block's inf or NaN product gives 0, as C's conversion
   does on x86 and ARM. float32 throughout, built without fast-math or contraction (_kernels.h), so
   the bytes are ggml's on every CPU: tests/test_quantize.py checks them against ggml_quantize_chunk.
   The scales are returned as float32; the caller stores them as f16 (numpy, round to nearest even). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#include "../_kernels.h"

#define QK 32
#define BLOCK_BYTES (2 + QK)

CLONES static void quantize(const float *restrict x, Py_ssize_t nb, uint8_t *restrict out, float *restrict scales) {
    const float half = 0x1.fffffep-2f; /* 0.49999997f, the float just below 0.5 */
    for (Py_ssize_t b = 0; b < nb; b++) {
        const float *xb = x + b * QK;
        /* the block's maximum |x|, on the bits: for non-negative floats the integer order is the
           float order. A NaN counts as 0 (the build refuses NaN before it gets here; ggml's own
           answer for one depends on where in the block it is). */
        int32_t top = 0; /* signed: masked bits are below 2^31, and SSE2 compares signed */
        for (int j = 0; j < QK; j++) {
            int32_t u;
            memcpy(&u, xb + j, sizeof u);
            u &= 0x7FFFFFFF;
            u = u > 0x7F800000 ? 0 : u;
            top = u > top ? u : top;
        }
        float amax;
        memcpy(&amax, &top, sizeof amax);
        const float d = amax / 127.0f;
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        scales[b] = d;
        uint8_t *q = out + b * BLOCK_BYTES + 2;
        for (int j = 0; j < QK; j++) {
            const float v = xb[j], f = fabsf(v) * inv + half;
            const int32_t t = f < 128.0f ? (int32_t)f : 0;
            q[j] = (uint8_t)(v < 0.0f ? -t : t);
        }
    }
}

PyDoc_STRVAR(q8_0_doc,
             "q8_0(x, out, scales)\n\n"
             "float32 values x (a whole number of blocks of 32) -> each block's 32 int8 at bytes 2..33 of\n"
             "its 34 in out, and its scale d (float32) in scales.");

static PyObject *q8_0(PyObject *self, PyObject *args) {
    Py_buffer x, out, scales;
    if (!PyArg_ParseTuple(args, "y*w*w*", &x, &out, &scales)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t nb = x.len / (QK * (Py_ssize_t)sizeof(float));
    if (x.len % (QK * sizeof(float)) || out.len != nb * BLOCK_BYTES || scales.len != nb * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "q8_0: buffer sizes do not match a whole number of blocks");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    quantize(x.buf, nb, out.buf, scales.buf);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    PyBuffer_Release(&scales);
    return result;
}

static PyMethodDef methods[] = {
    {"q8_0", q8_0, METH_VARARGS, q8_0_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_q8_0", "Q8_0, ggml's reference bytes, compiled.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__q8_0(void) { return PyModule_Create(&module); }

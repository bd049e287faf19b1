/* Check and decode the stored chunks of a Zarr v2 zip in one call, without the GIL.

   The Python loop this replaces (ssl4eos12.sources.fastzip) took the GIL back between every chunk's CRC-32
   and Blosc decode: a dozen handovers per tar member, each a point where a thread holding the GIL can be
   descheduled. Here one call reads each chunk's local header, checks its CRC-32 and its Blosc header, and
   decodes it (or copies it, for a chunk stored without a compressor) where it goes.

   No library is linked: the CRC-32 and Blosc functions are the ones the Python side already uses, passed
   in as addresses (zlib-ng's zng_crc32_z from the zlib_ng module, c-blosc's blosc_decompress_ctx from
   numcodecs' extension), so values are the same as on the Python path, bit for bit. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef uint32_t (*crc32_fn)(uint32_t crc, const unsigned char *buf, size_t len);
typedef int (*blosc_fn)(const void *src, void *dest, size_t destsize, int numinternalthreads);

/* What went wrong with a chunk; the Python side words the message (the same as its own path's). */
enum { OK = 0, BAD_SIGNATURE = 1, TRUNCATED = 2, BAD_CRC = 3, BAD_SIZE = 4, BAD_HEADER = 5, NOT_DECODED = 6,
       OUT_OF_BOUNDS = 7 };

static uint16_t read_u16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t read_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int check_and_decode(const unsigned char *src, Py_ssize_t src_len, unsigned char *dst, Py_ssize_t dst_len,
                            int64_t header, int64_t size, uint32_t crc, int64_t start, int64_t nbytes, int blosc,
                            crc32_fn crc32, blosc_fn decompress, int64_t *decoded) {
    if (header < 0 || header + 30 > src_len || memcmp(src + header, "PK\x03\x04", 4) != 0) return BAD_SIGNATURE;
    int64_t data = header + 30 + read_u16(src + header + 26) + read_u16(src + header + 28);
    if (size < 0 || data + size > src_len) return TRUNCATED;
    if (start < 0 || nbytes < 0 || start + nbytes > dst_len) return OUT_OF_BOUNDS;
    const unsigned char *chunk = src + data;
    if (crc32(0, chunk, (size_t)size) != crc) return BAD_CRC;
    if (!blosc) {
        if (size != nbytes) return BAD_SIZE;
        memcpy(dst + start, chunk, (size_t)size);
        return OK;
    }
    if (size < 16) return BAD_SIZE;
    if ((int64_t)read_u32(chunk + 4) != nbytes) return BAD_SIZE;  /* decoding into more would not fail */
    if ((int64_t)read_u32(chunk + 12) != size) return BAD_HEADER;  /* c-blosc trusts the header's length */
    int result = decompress(chunk, dst + start, (size_t)nbytes, 1);
    *decoded = result;
    return result == nbytes ? OK : NOT_DECODED;
}

static int int64_array(Py_buffer *view, Py_ssize_t n, const char *what) {
    if (view->itemsize != 8 || view->len != n * 8) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd int64 values", what, n);
        return 0;
    }
    return 1;
}

/* decode(src, headers, sizes, crcs, dst, starts, nbytes, blosc, crc32_address, blosc_address)
   -> None, or (index, problem, decoded) for the first chunk that failed (the ones before it are done). */
static PyObject *decode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer src, headers, sizes, crcs, dst, starts, nbytes, blosc;
    unsigned long long crc_address, blosc_address;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*y*y*y*KK", &src, &headers, &sizes, &crcs, &dst, &starts, &nbytes,
                          &blosc, &crc_address, &blosc_address))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = headers.len / 8;
    if (!int64_array(&headers, n, "headers") || !int64_array(&sizes, n, "sizes") || !int64_array(&starts, n, "starts")
        || !int64_array(&nbytes, n, "nbytes"))
        goto done;
    if (crcs.len != n * 4 || blosc.len != n) {
        PyErr_SetString(PyExc_ValueError, "crcs: expected uint32 values, blosc: one byte, per chunk");
        goto done;
    }
    if (!crc_address || !blosc_address) {
        PyErr_SetString(PyExc_ValueError, "no CRC-32 or Blosc function");
        goto done;
    }
    const int64_t *h = headers.buf, *s = sizes.buf, *st = starts.buf, *nb = nbytes.buf;
    const uint32_t *c = crcs.buf;
    const unsigned char *b = blosc.buf;
    crc32_fn crc32 = (crc32_fn)(uintptr_t)crc_address;
    blosc_fn decompress = (blosc_fn)(uintptr_t)blosc_address;
    Py_ssize_t failed = -1;
    int problem = OK;
    int64_t decoded = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        problem = check_and_decode(src.buf, src.len, dst.buf, dst.len, h[i], s[i], c[i], st[i], nb[i], b[i], crc32,
                                   decompress, &decoded);
        if (problem != OK) {
            failed = i;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    if (failed < 0) {
        result = Py_NewRef(Py_None);
    } else {
        result = Py_BuildValue("(nil)", failed, problem, (long)decoded);
    }
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&headers);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&crcs);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&nbytes);
    PyBuffer_Release(&blosc);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(src, headers, sizes, crcs, dst, starts, nbytes, blosc, crc32_address, blosc_address): check and decode "
     "stored zip chunks into dst without the GIL; None, or (index, problem, decoded) of the first that failed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_chunks", .m_doc = NULL, .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__chunks(void) { return PyModule_Create(&module); }

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


static uint16_t read_u16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t read_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Whether the chunk whose local header is at `header` checks out and was decoded (or copied) into dst[start:]; a
   chunk with a problem is left to the Python path, which reads it again and says what the problem is. */
static int check_and_decode(const unsigned char *src, Py_ssize_t src_len, unsigned char *dst, Py_ssize_t dst_len,
                            int64_t header, int64_t size, uint32_t crc, int64_t start, int64_t nbytes, int blosc,
                            crc32_fn crc32, blosc_fn decompress) {
    if (header < 0 || header + 30 > src_len || memcmp(src + header, "PK\x03\x04", 4) != 0) return 0;
    int64_t data = header + 30 + read_u16(src + header + 26) + read_u16(src + header + 28);
    if (size < 0 || data + size > src_len) return 0;
    if (start < 0 || nbytes < 0 || start + nbytes > dst_len) return 0;
    const unsigned char *chunk = src + data;
    if (crc32(0, chunk, (size_t)size) != crc) return 0;
    if (!blosc) {
        if (size != nbytes) return 0;
        memcpy(dst + start, chunk, (size_t)size);
        return 1;
    }
    if (size < 16) return 0;
    if ((int64_t)read_u32(chunk + 4) != nbytes) return 0;  /* decoding into more would not fail */
    if ((int64_t)read_u32(chunk + 12) != size) return 0;  /* c-blosc trusts the header's length */
    return decompress(chunk, dst + start, (size_t)nbytes, 1) == nbytes;
}

static int int64_array(Py_buffer *view, Py_ssize_t n, const char *what) {
    if (view->itemsize != 8 || view->len != n * 8) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd int64 values", what, n);
        return 0;
    }
    return 1;
}

/* decode(src, headers, sizes, crcs, dst, starts, nbytes, blosc, crc32_address, blosc_address)
   -> how many chunks it decoded, in order: all of them, or those before the first with a problem. */
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
    Py_ssize_t done = 0;
    Py_BEGIN_ALLOW_THREADS
    while (done < n && check_and_decode(src.buf, src.len, dst.buf, dst.len, h[done], s[done], c[done], st[done],
                                        nb[done], b[done], crc32, decompress))
        done++;
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(done);
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
     "stored zip chunks into dst without the GIL; how many it decoded, in order (all, or those before a bad one)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_chunks", .m_doc = NULL, .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__chunks(void) { return PyModule_Create(&module); }

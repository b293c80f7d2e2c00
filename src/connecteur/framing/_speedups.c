/* The length-prefixed split of `_LengthPrefixedDecoder.feed`, in C.
 *
 * split_frames(data, pos, out, header_size, little_endian, max_size) -> int
 *
 * From offset `pos` of `data` (any contiguous bytes-like object), append
 * every whole message to the list `out`, as bytes, and return the offset
 * where it stopped: the end of `data`, or the first header that is cut
 * short, announces more than `max_size`, or whose message is not whole yet.
 * `feed` handles what it stopped at in Python (so an oversize header raises
 * there, with the Python path's error, before anything is allocated for its
 * body), and keeps the bytes from that offset on, as it does without this
 * routine. It holds nothing between calls and never reads past `data`.
 *
 * Why C: mypyc compiles `feed`, but each message still costs a header
 * unpack, a slice and an append through the C API, the bulk of a pipelined
 * read's instructions (benchmarks/instructions.py, pipeline).
 * Optional: setup.py builds it with the compiled build, and framing/length.py
 * splits in Python when it is absent or CONNECTEUR_PURE=1.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* The headers `LengthPrefixed` accepts: B, H, I/L, Q, in either byte order. */
static uint64_t
read_length(const unsigned char *header, Py_ssize_t size, int little_endian)
{
    uint64_t length = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        length = (length << 8) | header[little_endian ? size - 1 - i : i];
    }
    return length;
}

static PyObject *
split_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "split_frames() takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *out = args[2];
    if (!PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "split_frames(): out must be a list");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t header_size = PyLong_AsSsize_t(args[3]);
    if (header_size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int little_endian = PyObject_IsTrue(args[4]);
    if (little_endian < 0) {
        return NULL;
    }
    unsigned long long max_size = PyLong_AsUnsignedLongLong(args[5]);
    if (max_size == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (header_size != 1 && header_size != 2 && header_size != 4 && header_size != 8) {
        PyErr_Format(PyExc_ValueError, "split_frames(): a header of %zd bytes", header_size);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *buf = view.buf;
    Py_ssize_t end = view.len;
    if (pos < 0 || pos > end) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "split_frames(): pos %zd outside 0..%zd", pos, end);
        return NULL;
    }
    while (end - pos >= header_size) {
        uint64_t size = read_length(buf + pos, header_size, little_endian);
        /* Compared as unsigned 64-bit numbers, before any sum that could overflow. */
        if (size > max_size || size > (uint64_t)(end - pos - header_size)) {
            break;
        }
        PyObject *message = PyBytes_FromStringAndSize((const char *)buf + pos + header_size, (Py_ssize_t)size);
        if (message == NULL || PyList_Append(out, message) < 0) {
            Py_XDECREF(message);
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_DECREF(message);
        pos += header_size + (Py_ssize_t)size;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(pos);
}

static PyMethodDef methods[] = {
    {"split_frames", (PyCFunction)(void (*)(void))split_frames, METH_FASTCALL,
     "split_frames(data, pos, out, header_size, little_endian, max_size) -> int\n\n"
     "Append the whole length-prefixed messages of data from pos to out; return where it stopped."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "connecteur.framing._speedups",
    .m_doc = "The length-prefixed split in C: see framing/length.py.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module);
}

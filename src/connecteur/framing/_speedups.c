/* The length-prefixed split and join of `LengthPrefixed`, in C.
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
 * join_frames(messages, header_size, little_endian, max_size) -> bytes | None
 *
 * The wire bytes of the list `messages` (bytes-like objects): each one's
 * length header, then itself, all in one new bytes object, what
 * `LengthPrefixed.encode_all` returns. None when a message is longer than
 * `max_size`: `encode_all` then frames them in Python, which raises the
 * Python path's error for it.
 *
 * Why C: mypyc compiles `feed` and `encode_all`, but each message still
 * costs a header unpack or pack, a slice or a concatenation, and an append
 * through the C API: the bulk of a pipelined read's instructions, and a
 * tenth of a request's (benchmarks/instructions.py, pipeline and many).
 * Optional: setup.py builds it with the compiled build, and framing/length.py
 * splits and joins in Python when it is absent or CONNECTEUR_PURE=1.
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

static void
write_length(unsigned char *header, uint64_t length, Py_ssize_t size, int little_endian)
{
    for (Py_ssize_t i = 0; i < size; i++) {
        header[little_endian ? i : size - 1 - i] = (unsigned char)(length & 0xff);
        length >>= 8;
    }
}

/* The header's size and byte order and the size limit, as both routines take them. */
static int
parse_header(PyObject *const *args, Py_ssize_t *header_size, int *little_endian, unsigned long long *max_size)
{
    *header_size = PyLong_AsSsize_t(args[0]);
    if (*header_size == -1 && PyErr_Occurred()) {
        return -1;
    }
    *little_endian = PyObject_IsTrue(args[1]);
    if (*little_endian < 0) {
        return -1;
    }
    *max_size = PyLong_AsUnsignedLongLong(args[2]);
    if (*max_size == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (*header_size != 1 && *header_size != 2 && *header_size != 4 && *header_size != 8) {
        PyErr_Format(PyExc_ValueError, "a header of %zd bytes", *header_size);
        return -1;
    }
    if (*header_size < 8) {  /* never past what the header can say: a joined header must not wrap */
        unsigned long long largest = (1ULL << (8 * *header_size)) - 1;
        if (*max_size > largest) {
            *max_size = largest;
        }
    }
    return 0;
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
    Py_ssize_t header_size;
    int little_endian;
    unsigned long long max_size;
    if (parse_header(args + 3, &header_size, &little_endian, &max_size) < 0) {
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

/* The length of message `item`, or -1 with an exception set. */
static Py_ssize_t
message_length(PyObject *item)
{
    if (PyBytes_CheckExact(item)) {
        return PyBytes_GET_SIZE(item);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    Py_ssize_t length = view.len;
    PyBuffer_Release(&view);
    return length;
}

/* Copy `item`'s header and bytes to `*dst`, which has `*left` bytes of room; -1 with an exception set. */
static int
copy_frame(PyObject *item, char **dst, Py_ssize_t *left, Py_ssize_t header_size, int little_endian)
{
    Py_buffer view;
    if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (view.len > *left - header_size) {  /* it grew since it was measured */
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "join_frames(): a message changed size while being framed");
        return -1;
    }
    write_length((unsigned char *)*dst, (uint64_t)view.len, header_size, little_endian);
    memcpy(*dst + header_size, view.buf, (size_t)view.len);
    *dst += header_size + view.len;
    *left -= header_size + view.len;
    PyBuffer_Release(&view);
    return 0;
}

/* Returned by join_bytes when a message is not exactly bytes. */
static PyObject *const NOT_ALL_BYTES = (PyObject *)&PyBytes_Type;

/* join_frames of a list of bytes only, the common case: no buffer to get, and
 * no Python code can run to change the list. NOT_ALL_BYTES if one is not bytes. */
static PyObject *
join_bytes(PyObject *messages, Py_ssize_t header_size, int little_endian, unsigned long long max_size)
{
    Py_ssize_t count = PyList_GET_SIZE(messages), total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(messages, i);
        if (!PyBytes_CheckExact(item)) {
            return NOT_ALL_BYTES;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(item);
        if ((unsigned long long)length > max_size) {
            Py_RETURN_NONE;
        }
        if (length > PY_SSIZE_T_MAX - header_size - total) {
            return PyErr_NoMemory();
        }
        total += header_size + length;
    }
    PyObject *wire = PyBytes_FromStringAndSize(NULL, total);
    if (wire == NULL) {
        return NULL;
    }
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(wire);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(messages, i);
        Py_ssize_t length = PyBytes_GET_SIZE(item);
        write_length(dst, (uint64_t)length, header_size, little_endian);
        memcpy(dst + header_size, PyBytes_AS_STRING(item), (size_t)length);
        dst += header_size + length;
    }
    return wire;
}

static PyObject *
join_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "join_frames() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *messages = args[0];
    if (!PyList_CheckExact(messages)) {
        PyErr_SetString(PyExc_TypeError, "join_frames(): messages must be a list");
        return NULL;
    }
    Py_ssize_t header_size;
    int little_endian;
    unsigned long long max_size;
    if (parse_header(args + 1, &header_size, &little_endian, &max_size) < 0) {
        return NULL;
    }
    PyObject *wire = join_bytes(messages, header_size, little_endian, max_size);
    if (wire != NOT_ALL_BYTES) {
        return wire;
    }
    /* A new reference: getting a buffer may run code that changes the list. */
    PyObject *items = PySequence_Tuple(messages);
    if (items == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(items), total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t length = message_length(PyTuple_GET_ITEM(items, i));
        if (length < 0) {
            Py_DECREF(items);
            return NULL;
        }
        if ((unsigned long long)length > max_size) {
            Py_DECREF(items);
            Py_RETURN_NONE;
        }
        if (length > PY_SSIZE_T_MAX - header_size - total) {
            Py_DECREF(items);
            return PyErr_NoMemory();
        }
        total += header_size + length;
    }
    wire = PyBytes_FromStringAndSize(NULL, total);
    if (wire == NULL) {
        Py_DECREF(items);
        return NULL;
    }
    char *dst = PyBytes_AS_STRING(wire);
    Py_ssize_t left = total;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (copy_frame(PyTuple_GET_ITEM(items, i), &dst, &left, header_size, little_endian) < 0) {
            Py_DECREF(items);
            Py_DECREF(wire);
            return NULL;
        }
    }
    Py_DECREF(items);
    if (left != 0) {  /* one shrank since it was measured */
        Py_DECREF(wire);
        PyErr_SetString(PyExc_RuntimeError, "join_frames(): a message changed size while being framed");
        return NULL;
    }
    return wire;
}

static PyMethodDef methods[] = {
    {"split_frames", (PyCFunction)(void (*)(void))split_frames, METH_FASTCALL,
     "split_frames(data, pos, out, header_size, little_endian, max_size) -> int\n\n"
     "Append the whole length-prefixed messages of data from pos to out; return where it stopped."},
    {"join_frames", (PyCFunction)(void (*)(void))join_frames, METH_FASTCALL,
     "join_frames(messages, header_size, little_endian, max_size) -> bytes | None\n\n"
     "Each message of the list after its length header, in one bytes; None if one is over max_size."},
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
    .m_doc = "The length-prefixed split and join in C: see framing/length.py.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module);
}

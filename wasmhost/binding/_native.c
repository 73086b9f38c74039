/* wasmhost._native: the hot path of the binding layer, compiled.
 *
 * The pure-Python binding (linker.py / convert.py) spends ~15 us of every host
 * call in ctypes callback dispatch and per-value conversion; here the same
 * work is a few hundred nanoseconds. This module provides:
 *
 *   - a host-function trampoline that lifts arguments and lowers results
 *     directly on wasmtime_component_val_t memory, driven by "specs" (nested
 *     tuples the Python side builds once per WIT type, see native.py);
 *   - a resource destructor trampoline;
 *   - call_handler(): calls wasi:http's handle while keeping the GIL, so a
 *     short guest call does not bounce the GIL between threads on every host
 *     call, plus an epoch-deadline callback that drops the GIL once the call
 *     has run for one epoch tick (long-running wasm still runs in parallel)
 *     and traps the store once it is interrupted;
 *   - a native epoch ticker thread (it must tick while a guest holds the GIL).
 *
 * wasmtime's C API is reached through function pointers the Python side
 * passes in from the libwasmtime wasmtime-py already loaded, so nothing is
 * linked at build time. Value layout: see capi.py (asserted at init).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* -- wasmtime value layout ------------------------------------------------ */

typedef struct { size_t size; char *data; } byte_vec;
typedef struct val val;

struct val {
    uint8_t kind;
    union {
        bool b; int8_t s8; uint8_t u8; int16_t s16; uint16_t u16; int32_t s32; uint32_t u32;
        int64_t s64; uint64_t u64; float f32; double f64; uint32_t ch;
        byte_vec string;
        struct { size_t size; val *data; } list;          /* list and tuple */
        struct { size_t size; struct record_entry *data; } record;
        struct { byte_vec tag; val *payload; } variant;
        byte_vec enum_name;
        val *option;
        struct { bool is_ok; val *payload; } result;
        struct { size_t size; byte_vec *data; } flags;
        void *resource;
    } of;
};
struct record_entry { byte_vec name; val value; };

_Static_assert(sizeof(val) == 32, "wasmtime_component_val_t is 32 bytes");
_Static_assert(sizeof(struct record_entry) == 48, "record entries are 48 bytes");

/* Spec codes (native.py builds specs with the same numbers). */
enum {
    T_BOOL, T_S8, T_U8, T_S16, T_U16, T_S32, T_U32, T_S64, T_U64, T_F32, T_F64, T_CHAR,
    T_STRING, T_LIST, T_RECORD, T_TUPLE, T_VARIANT, T_ENUM, T_OPTION, T_RESULT, T_FLAGS,
    T_OWN, T_BORROW, T_BYTES, T_COUNT
};
/* wasmtime's kind byte for each spec code (given by init). */
static uint8_t KIND[T_COUNT];

/* -- wasmtime entry points (given by init) -------------------------------- */

static void (*w_byte_vec_new)(byte_vec *, size_t, const char *);
static void (*w_byte_vec_delete)(byte_vec *);
static void (*w_vallist_new_uninit)(void *, size_t);
static void (*w_valtuple_new_uninit)(void *, size_t);
static void (*w_valrecord_new_uninit)(void *, size_t);
static void (*w_valflags_new_uninit)(void *, size_t);
static val *(*w_val_new)(val *);
static void *(*w_resource_host_new)(bool, uint32_t, uint32_t);
static uint32_t (*w_resource_host_rep)(void *);
static void (*w_resource_host_delete)(void *);
static void *(*w_resource_host_to_any)(void *, void *, void **);
static void *(*w_resource_any_to_host)(void *, void *, void **);
static void (*w_resource_any_delete)(void *);
static void *(*w_error_new)(const char *);
static void (*w_error_message)(void *, byte_vec *);
static void (*w_error_delete)(void *);
static void *(*w_func_call)(void *, void *, val *, size_t, val *, size_t);
static void (*w_set_epoch_deadline)(void *, uint64_t);
static void (*w_increment_epoch)(void *);

/* Python classes of the value mapping (wasmhost.wasi.interface), given by init. */
static PyObject *OkType, *ErrType, *CaseType, *TrapType, *HostResourceType;
static PyObject *s_ctx, *s_table, *s_profile, *s_get, *s_take, *s_insert, *s_value;
static int initialized;

/* -- GIL handling for guest calls ------------------------------------------ */

/* Set while this thread is inside call_holding_gil(); `released` holds the thread
 * state once the epoch callback has dropped the GIL for the rest of the call. */
static __thread int in_guest_call;
static __thread PyThreadState *released;

/* -- helpers ---------------------------------------------------------------- */

static PyObject *trap_from_error(void *error, const char *what) {
    byte_vec message = {0, NULL};
    w_error_message(error, &message);
    PyErr_Format(TrapType, "%s: %.*s", what, (int)message.size, message.data ? message.data : "");
    w_byte_vec_delete(&message);
    w_error_delete(error);
    return NULL;
}

static long spec_code(PyObject *spec) {
    return PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
}

/* The interned Python name whose UTF-8 bytes equal `name`, from ((str, bytes, ...), ...). */
static PyObject *known_name(PyObject *names, const byte_vec *name) {
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PyTuple_GET_ITEM(names, i);
        PyObject *raw = PyTuple_GET_ITEM(entry, 1);
        if ((size_t)PyBytes_GET_SIZE(raw) == name->size && memcmp(PyBytes_AS_STRING(raw), name->data, name->size) == 0)
            return entry;
    }
    return NULL;
}

typedef struct {
    void *ctx;          /* wasmtime_context_t * of the calling store */
    PyObject *table;    /* its ResourceTable */
} call_env;

static int any_to_rep(call_env *env, void *any, uint32_t *rep) {
    void *host = NULL;
    void *error = w_resource_any_to_host(env->ctx, any, &host);
    if (error) {
        trap_from_error(error, "invalid resource handle");
        return -1;
    }
    *rep = w_resource_host_rep(host);
    w_resource_host_delete(host);
    return 0;
}

/* -- lifting: val -> Python --------------------------------------------------- */

static PyObject *lift(PyObject *spec, const val *v, call_env *env);

static PyObject *lift_payload(PyObject *spec, const val *payload, call_env *env) {
    if (spec == Py_None || payload == NULL)
        Py_RETURN_NONE;
    return lift(spec, payload, env);
}

static PyObject *lift(PyObject *spec, const val *v, call_env *env) {
    switch (spec_code(spec)) {
    case T_BOOL: return PyBool_FromLong(v->of.b);
    case T_S8: return PyLong_FromLong(v->of.s8);
    case T_U8: return PyLong_FromLong(v->of.u8);
    case T_S16: return PyLong_FromLong(v->of.s16);
    case T_U16: return PyLong_FromLong(v->of.u16);
    case T_S32: return PyLong_FromLong(v->of.s32);
    case T_U32: return PyLong_FromUnsignedLong(v->of.u32);
    case T_S64: return PyLong_FromLongLong(v->of.s64);
    case T_U64: return PyLong_FromUnsignedLongLong(v->of.u64);
    case T_F32: return PyFloat_FromDouble(v->of.f32);
    case T_F64: return PyFloat_FromDouble(v->of.f64);
    case T_CHAR: return PyUnicode_FromOrdinal((int)v->of.ch);
    case T_STRING: return PyUnicode_DecodeUTF8(v->of.string.data, (Py_ssize_t)v->of.string.size, "strict");
    case T_BYTES: {
        size_t n = v->of.list.size;
        PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (out == NULL) return NULL;
        char *dst = PyBytes_AS_STRING(out);
        const val *items = v->of.list.data;
        for (size_t i = 0; i < n; i++) dst[i] = (char)items[i].of.u8;
        return out;
    }
    case T_LIST: {
        PyObject *element = PyTuple_GET_ITEM(spec, 1);
        size_t n = v->of.list.size;
        PyObject *out = PyList_New((Py_ssize_t)n);
        if (out == NULL) return NULL;
        for (size_t i = 0; i < n; i++) {
            PyObject *item = lift(element, &v->of.list.data[i], env);
            if (item == NULL) { Py_DECREF(out); return NULL; }
            PyList_SET_ITEM(out, (Py_ssize_t)i, item);
        }
        return out;
    }
    case T_TUPLE: {
        PyObject *elements = PyTuple_GET_ITEM(spec, 1);
        Py_ssize_t n = PyTuple_GET_SIZE(elements);
        PyObject *out = PyTuple_New(n);
        if (out == NULL) return NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = lift(PyTuple_GET_ITEM(elements, i), &v->of.list.data[i], env);
            if (item == NULL) { Py_DECREF(out); return NULL; }
            PyTuple_SET_ITEM(out, i, item);
        }
        return out;
    }
    case T_RECORD: {
        PyObject *fields = PyTuple_GET_ITEM(spec, 1);
        Py_ssize_t n = PyTuple_GET_SIZE(fields);
        PyObject *out = PyDict_New();
        if (out == NULL) return NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *field = PyTuple_GET_ITEM(fields, i);
            PyObject *item = lift(PyTuple_GET_ITEM(field, 2), &v->of.record.data[i].value, env);
            if (item == NULL || PyDict_SetItem(out, PyTuple_GET_ITEM(field, 0), item) < 0) {
                Py_XDECREF(item); Py_DECREF(out); return NULL;
            }
            Py_DECREF(item);
        }
        return out;
    }
    case T_VARIANT: {
        PyObject *entry = known_name(PyTuple_GET_ITEM(spec, 1), &v->of.variant.tag);
        if (entry == NULL) return PyErr_Format(PyExc_TypeError, "unknown variant case");
        PyObject *payload = lift_payload(PyTuple_GET_ITEM(entry, 2), v->of.variant.payload, env);
        if (payload == NULL) return NULL;
        PyObject *out = PyObject_CallFunctionObjArgs(CaseType, PyTuple_GET_ITEM(entry, 0), payload, NULL);
        Py_DECREF(payload);
        return out;
    }
    case T_ENUM: {
        PyObject *entry = known_name(PyTuple_GET_ITEM(spec, 1), &v->of.enum_name);
        if (entry == NULL) return PyErr_Format(PyExc_TypeError, "unknown enum case");
        return Py_NewRef(PyTuple_GET_ITEM(entry, 0));
    }
    case T_FLAGS: {
        PyObject *names = PyTuple_GET_ITEM(spec, 1);
        PyObject *out = PyFrozenSet_New(NULL);
        if (out == NULL) return NULL;
        for (size_t i = 0; i < v->of.flags.size; i++) {
            PyObject *entry = known_name(names, &v->of.flags.data[i]);
            if (entry == NULL) { Py_DECREF(out); return PyErr_Format(PyExc_TypeError, "unknown flag"); }
            if (PySet_Add(out, PyTuple_GET_ITEM(entry, 0)) < 0) { Py_DECREF(out); return NULL; }
        }
        return out;
    }
    case T_OPTION:
        return lift_payload(PyTuple_GET_ITEM(spec, 1), v->of.option, env);
    case T_RESULT: {
        bool ok = v->of.result.is_ok;
        PyObject *payload = lift_payload(PyTuple_GET_ITEM(spec, ok ? 1 : 2), v->of.result.payload, env);
        if (payload == NULL) return NULL;
        PyObject *out = PyObject_CallOneArg(ok ? OkType : ErrType, payload);
        Py_DECREF(payload);
        return out;
    }
    case T_OWN:
    case T_BORROW: {
        uint32_t rep;
        if (any_to_rep(env, v->of.resource, &rep) < 0) return NULL;
        PyObject *key = PyLong_FromUnsignedLong(rep);
        if (key == NULL) return NULL;
        PyObject *out = PyObject_CallMethodOneArg(env->table, spec_code(spec) == T_OWN ? s_take : s_get, key);
        Py_DECREF(key);
        return out;
    }
    default:
        return PyErr_Format(PyExc_SystemError, "bad value spec");
    }
}

/* -- lowering: Python -> val --------------------------------------------------- */

static int lower(PyObject *spec, PyObject *value, val *v, call_env *env);

/* Lower `value` into a new heap val (wasmtime takes ownership). */
static int lower_boxed(PyObject *spec, PyObject *value, val **out, call_env *env) {
    if (spec == Py_None) { *out = NULL; return 0; }
    val scratch;
    if (lower(spec, value, &scratch, env) < 0) return -1;
    *out = w_val_new(&scratch);
    return 0;
}

static int lower_int(PyObject *value, long long lo, unsigned long long hi, const char *name, uint64_t *out) {
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (overflow > 0 && hi == ULLONG_MAX) {
        unsigned long long u = PyLong_AsUnsignedLongLong(value);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        *out = u;
        return 0;
    }
    if (overflow || x < lo || (x > 0 && (unsigned long long)x > hi)) {
        PyErr_Format(PyExc_OverflowError, "%R is out of range for %s", value, name);
        return -1;
    }
    *out = (uint64_t)x;
    return 0;
}

static int lower_utf8(PyObject *value, byte_vec *out) {
    Py_ssize_t size;
    const char *data = PyUnicode_AsUTF8AndSize(value, &size);
    if (data == NULL) return -1;
    w_byte_vec_new(out, (size_t)size, data);
    return 0;
}

/* index of `name` in a spec's {name: index} dict, or -1 with TypeError */
static Py_ssize_t case_index(PyObject *index, PyObject *name, const char *what) {
    PyObject *found = PyDict_GetItemWithError(index, name);
    if (found == NULL) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "%s has no case %R", what, name);
        return -1;
    }
    return PyLong_AsSsize_t(found);
}

/* Hand `value` (a HostResource) to the guest as a new owned handle of host type `type_id`. */
static int lower_own(call_env *env, PyObject *value, uint32_t type_id, val *v) {
    v->kind = KIND[T_OWN];
    if (!PyObject_TypeCheck(value, (PyTypeObject *)HostResourceType)) {
        PyErr_Format(PyExc_TypeError, "expected a host resource object, got %R", value);
        return -1;
    }
    PyObject *key = PyObject_CallMethodOneArg(env->table, s_insert, value);
    if (key == NULL) return -1;
    uint32_t rep = (uint32_t)PyLong_AsUnsignedLong(key);
    void *host = w_resource_host_new(true, rep, type_id);
    void *any = NULL;
    void *error = w_resource_host_to_any(env->ctx, host, &any);
    w_resource_host_delete(host);
    if (error) {
        PyObject *taken = PyObject_CallMethodOneArg(env->table, s_take, key);
        Py_XDECREF(taken);
        Py_DECREF(key);
        trap_from_error(error, "cannot hand a resource to the guest");
        return -1;
    }
    Py_DECREF(key);
    v->of.resource = any;
    return 0;
}

static int lower(PyObject *spec, PyObject *value, val *v, call_env *env) {
    long code = spec_code(spec);
    uint64_t x;
    v->kind = KIND[code == T_BYTES ? T_LIST : code == T_BORROW ? T_OWN : code];
    switch (code) {
    case T_BOOL: {
        int truth = PyObject_IsTrue(value);
        if (truth < 0) return -1;
        v->of.b = truth;
        return 0;
    }
    case T_S8: if (lower_int(value, INT8_MIN, INT8_MAX, "s8", &x) < 0) return -1; v->of.s8 = (int8_t)x; return 0;
    case T_U8: if (lower_int(value, 0, UINT8_MAX, "u8", &x) < 0) return -1; v->of.u8 = (uint8_t)x; return 0;
    case T_S16: if (lower_int(value, INT16_MIN, INT16_MAX, "s16", &x) < 0) return -1; v->of.s16 = (int16_t)x; return 0;
    case T_U16: if (lower_int(value, 0, UINT16_MAX, "u16", &x) < 0) return -1; v->of.u16 = (uint16_t)x; return 0;
    case T_S32: if (lower_int(value, INT32_MIN, INT32_MAX, "s32", &x) < 0) return -1; v->of.s32 = (int32_t)x; return 0;
    case T_U32: if (lower_int(value, 0, UINT32_MAX, "u32", &x) < 0) return -1; v->of.u32 = (uint32_t)x; return 0;
    case T_S64: if (lower_int(value, INT64_MIN, INT64_MAX, "s64", &x) < 0) return -1; v->of.s64 = (int64_t)x; return 0;
    case T_U64: if (lower_int(value, 0, ULLONG_MAX, "u64", &x) < 0) return -1; v->of.u64 = x; return 0;
    case T_F32: case T_F64: {
        double d = PyFloat_AsDouble(value);
        if (d == -1.0 && PyErr_Occurred()) return -1;
        if (code == T_F32) v->of.f32 = (float)d; else v->of.f64 = d;
        return 0;
    }
    case T_CHAR:
        if (!PyUnicode_Check(value) || PyUnicode_GET_LENGTH(value) != 1) {
            PyErr_Format(PyExc_TypeError, "expected a one-character str for a char, got %R", value);
            return -1;
        }
        v->of.ch = PyUnicode_READ_CHAR(value, 0);
        return 0;
    case T_STRING:
        if (!PyUnicode_Check(value)) {
            PyErr_Format(PyExc_TypeError, "expected str for a string, got %R", value);
            return -1;
        }
        return lower_utf8(value, &v->of.string);
    case T_ENUM: {
        if (!PyUnicode_Check(value)) { PyErr_Format(PyExc_TypeError, "expected str for an enum, got %R", value); return -1; }
        Py_ssize_t i = case_index(PyTuple_GET_ITEM(spec, 2), value, "enum");
        if (i < 0) return -1;
        PyObject *raw = PyTuple_GET_ITEM(PyTuple_GET_ITEM(PyTuple_GET_ITEM(spec, 1), i), 1);
        w_byte_vec_new(&v->of.enum_name, (size_t)PyBytes_GET_SIZE(raw), PyBytes_AS_STRING(raw));
        return 0;
    }
    case T_BYTES: {
        Py_buffer buffer;
        if (PyObject_GetBuffer(value, &buffer, PyBUF_SIMPLE) < 0) return -1;
        size_t n = (size_t)buffer.len;
        w_vallist_new_uninit(&v->of.list, n);
        const unsigned char *src = buffer.buf;
        val *items = v->of.list.data;
        uint8_t kind = KIND[T_U8];
        for (size_t i = 0; i < n; i++) { items[i].kind = kind; items[i].of.u8 = src[i]; }
        PyBuffer_Release(&buffer);
        return 0;
    }
    case T_LIST: case T_TUPLE: {
        PyObject *seq = PySequence_Fast(value, code == T_LIST ? "expected a sequence for a list" : "expected a sequence for a tuple");
        if (seq == NULL) return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        PyObject *elements = PyTuple_GET_ITEM(spec, 1);
        if (code == T_TUPLE && n != PyTuple_GET_SIZE(elements)) {
            PyErr_Format(PyExc_TypeError, "expected a tuple of %zd items, got %zd", PyTuple_GET_SIZE(elements), n);
            Py_DECREF(seq);
            return -1;
        }
        (code == T_LIST ? w_vallist_new_uninit : w_valtuple_new_uninit)(&v->of.list, (size_t)n);
        PyObject **items = PySequence_Fast_ITEMS(seq);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *element = code == T_LIST ? elements : PyTuple_GET_ITEM(elements, i);
            if (lower(element, items[i], &v->of.list.data[i], env) < 0) { Py_DECREF(seq); return -1; }
        }
        Py_DECREF(seq);
        return 0;
    }
    case T_RECORD: {
        PyObject *fields = PyTuple_GET_ITEM(spec, 1);
        Py_ssize_t n = PyTuple_GET_SIZE(fields);
        w_valrecord_new_uninit(&v->of.record, (size_t)n);
        int is_dict = PyDict_Check(value);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *field = PyTuple_GET_ITEM(fields, i);
            PyObject *name = PyTuple_GET_ITEM(field, 0), *raw = PyTuple_GET_ITEM(field, 1);
            struct record_entry *entry = &v->of.record.data[i];
            w_byte_vec_new(&entry->name, (size_t)PyBytes_GET_SIZE(raw), PyBytes_AS_STRING(raw));
            PyObject *item;
            if (is_dict) {
                item = PyDict_GetItemWithError(value, name);
                if (item == NULL) {
                    if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, name);
                    return -1;
                }
                Py_INCREF(item);
            } else {
                item = PyObject_GetAttr(value, name);
                if (item == NULL) return -1;
            }
            int rc = lower(PyTuple_GET_ITEM(field, 2), item, &entry->value, env);
            Py_DECREF(item);
            if (rc < 0) return -1;
        }
        return 0;
    }
    case T_VARIANT: {
        PyObject *tag, *payload;
        if (PyUnicode_Check(value)) {
            tag = value; payload = Py_None;
        } else if (PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 2) {
            tag = PyTuple_GET_ITEM(value, 0); payload = PyTuple_GET_ITEM(value, 1);
        } else {
            PyErr_Format(PyExc_TypeError, "expected a Case or a case name for a variant, got %R", value);
            return -1;
        }
        Py_ssize_t i = case_index(PyTuple_GET_ITEM(spec, 2), tag, "variant");
        if (i < 0) return -1;
        PyObject *entry = PyTuple_GET_ITEM(PyTuple_GET_ITEM(spec, 1), i);
        PyObject *raw = PyTuple_GET_ITEM(entry, 1);
        val *boxed;
        if (lower_boxed(PyTuple_GET_ITEM(entry, 2), payload, &boxed, env) < 0) return -1;
        w_byte_vec_new(&v->of.variant.tag, (size_t)PyBytes_GET_SIZE(raw), PyBytes_AS_STRING(raw));
        v->of.variant.payload = boxed;
        return 0;
    }
    case T_OPTION:
        if (value == Py_None) { v->of.option = NULL; return 0; }
        return lower_boxed(PyTuple_GET_ITEM(spec, 1), value, &v->of.option, env);
    case T_RESULT: {
        PyObject *payload;
        bool ok;
        if (PyObject_TypeCheck(value, (PyTypeObject *)OkType)) {
            ok = true; payload = PyTuple_GET_ITEM(value, 0);
        } else if (PyObject_TypeCheck(value, (PyTypeObject *)ErrType)) {
            ok = false;
            payload = PyObject_GetAttr(value, s_value);
            if (payload == NULL) return -1;
            Py_DECREF(payload);  /* kept alive by the Err instance */
        } else {
            PyErr_Format(PyExc_TypeError, "expected Ok(...) or Err(...) for a nested result, got %R", value);
            return -1;
        }
        v->of.result.is_ok = ok;
        return lower_boxed(PyTuple_GET_ITEM(spec, ok ? 1 : 2), payload, &v->of.result.payload, env);
    }
    case T_FLAGS: {
        PyObject *seq = PySequence_Fast(value, "expected an iterable of flag names");
        if (seq == NULL) return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        PyObject **items = PySequence_Fast_ITEMS(seq);
        PyObject *names = PyTuple_GET_ITEM(spec, 1), *index = PyTuple_GET_ITEM(spec, 2);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (case_index(index, items[i], "flags") < 0) { Py_DECREF(seq); return -1; }
        }
        w_valflags_new_uninit(&v->of.flags, (size_t)n);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *raw = PyTuple_GET_ITEM(PyTuple_GET_ITEM(names, case_index(index, items[i], "flags")), 1);
            w_byte_vec_new(&v->of.flags.data[i], (size_t)PyBytes_GET_SIZE(raw), PyBytes_AS_STRING(raw));
        }
        Py_DECREF(seq);
        return 0;
    }
    case T_OWN:
        return lower_own(env, value, (uint32_t)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(spec, 1)), v);
    default:
        PyErr_Format(PyExc_TypeError, "values of this type cannot be returned to the guest");
        return -1;
    }
}

/* -- the host-function trampoline ------------------------------------------------- */

/* A function's plan (a tuple built by linker.py, kept alive by the linker):
 *   (stores, fn, param_specs, result_spec | None, returns_result, index, slow_call, on_error)
 * stores: {context address: StoreBinding}; slow_call(index, ctx, args, nargs, results, nresults)
 * is the pure-Python trampoline (used while a store is being profiled);
 * on_error(index, ctx, exception) logs or records the failure and returns a
 * wasmtime_error_t address. */
enum { P_STORES, P_FN, P_PARAMS, P_RESULT, P_RETURNS_RESULT, P_INDEX, P_SLOW_CALL, P_ON_ERROR };
#define MAX_INLINE_ARGS 16

static void *report_failure(PyObject *plan, void *ctx) {
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL && exc != NULL) PyException_SetTraceback(exc, tb);
    void *error = NULL;
    PyObject *ctx_int = PyLong_FromVoidPtr(ctx);
    PyObject *result = ctx_int == NULL ? NULL : PyObject_CallFunctionObjArgs(
        PyTuple_GET_ITEM(plan, P_ON_ERROR), PyTuple_GET_ITEM(plan, P_INDEX), ctx_int, exc ? exc : Py_None, NULL);
    Py_XDECREF(ctx_int);
    Py_XDECREF(type); Py_XDECREF(exc); Py_XDECREF(tb);
    if (result != NULL) {
        error = PyLong_AsVoidPtr(result);
        Py_DECREF(result);
    }
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable(PyTuple_GET_ITEM(plan, P_ON_ERROR));
    }
    return error ? error : w_error_new("wasmhost: host call failed");
}

static void *host_call(void *data, void *ctx, const void *ty, val *args, size_t nargs, val *results, size_t nresults) {
    (void)ty;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *plan = (PyObject *)data;
    void *error = NULL;
    PyObject *binding = NULL, *pyctx = NULL, *table = NULL, *value = NULL;
    PyObject *inline_args[MAX_INLINE_ARGS + 1];
    PyObject **argv = inline_args;
    size_t lifted = 0;

    PyObject *key = PyLong_FromVoidPtr(ctx);
    if (key == NULL) goto fail;
    binding = PyDict_GetItemWithError(PyTuple_GET_ITEM(plan, P_STORES), key);
    Py_DECREF(key);
    if (binding == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "host call from a store wasmhost did not bind");
        goto fail;
    }
    Py_INCREF(binding);
    PyObject *profile = PyObject_GetAttr(binding, s_profile);
    if (profile == NULL) goto fail;
    Py_DECREF(profile);
    if (profile != Py_None) {
        /* Profiled stores take the Python trampoline, which times every call. */
        PyObject *r = PyObject_CallFunction(PyTuple_GET_ITEM(plan, P_SLOW_CALL), "OKKnKn",
            PyTuple_GET_ITEM(plan, P_INDEX), (unsigned long long)(uintptr_t)ctx,
            (unsigned long long)(uintptr_t)args, (Py_ssize_t)nargs,
            (unsigned long long)(uintptr_t)results, (Py_ssize_t)nresults);
        if (r == NULL) goto fail;
        error = PyLong_AsVoidPtr(r);
        Py_DECREF(r);
        if (PyErr_Occurred()) goto fail;
        goto done;
    }
    pyctx = PyObject_GetAttr(binding, s_ctx);
    table = pyctx ? PyObject_GetAttr(binding, s_table) : NULL;
    if (table == NULL) goto fail;

    call_env env = {ctx, table};
    PyObject *params = PyTuple_GET_ITEM(plan, P_PARAMS);
    size_t nparams = (size_t)PyTuple_GET_SIZE(params);
    if (nparams != nargs) {
        PyErr_Format(PyExc_RuntimeError, "expected %zu arguments, wasmtime passed %zu", nparams, nargs);
        goto fail;
    }
    if (nparams > MAX_INLINE_ARGS) {
        argv = PyMem_Malloc((nparams + 1) * sizeof(PyObject *));
        if (argv == NULL) { PyErr_NoMemory(); goto fail; }
    }
    argv[0] = pyctx;
    for (; lifted < nparams; lifted++) {
        PyObject *arg = lift(PyTuple_GET_ITEM(params, lifted), &args[lifted], &env);
        if (arg == NULL) goto fail;
        argv[1 + lifted] = arg;
    }
    value = PyObject_Vectorcall(PyTuple_GET_ITEM(plan, P_FN), argv, 1 + nparams, NULL);
    int returns_result = PyTuple_GET_ITEM(plan, P_RETURNS_RESULT) == Py_True;
    if (value == NULL) {
        if (!returns_result || !PyErr_ExceptionMatches(ErrType)) goto fail;
        PyObject *type, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        Py_XDECREF(type); Py_XDECREF(tb);
    }
    PyObject *result_spec = PyTuple_GET_ITEM(plan, P_RESULT);
    if (result_spec == Py_None) {
        if (value != Py_None) {
            PyErr_Format(PyExc_TypeError, "returned %R but the WIT function has no result", value);
            goto fail;
        }
    } else if (nresults < 1) {
        PyErr_SetString(PyExc_RuntimeError, "wasmtime passed no result slot");
        goto fail;
    } else {
        int rc;
        if (returns_result) {
            /* A returned (top-level) result: the plain value is ok, an Err is err. */
            bool ok = !PyObject_TypeCheck(value, (PyTypeObject *)ErrType);
            PyObject *payload = value;
            if (!ok) {
                payload = PyObject_GetAttr(value, s_value);
                if (payload == NULL) goto fail;
                Py_DECREF(payload);  /* kept alive by the Err */
            }
            results[0].kind = KIND[T_RESULT];
            results[0].of.result.is_ok = ok;
            rc = lower_boxed(PyTuple_GET_ITEM(result_spec, ok ? 1 : 2), payload, &results[0].of.result.payload, &env);
        } else {
            rc = lower(result_spec, value, &results[0], &env);
        }
        if (rc < 0) {
            /* Leave wasmtime a value it can drop safely; partial storage leaks. */
            results[0].kind = KIND[T_BOOL];
            goto fail;
        }
    }
    goto done;

fail:
    error = report_failure(plan, ctx);
done:
    for (size_t i = 0; i < lifted; i++) Py_DECREF(argv[1 + i]);
    if (argv != inline_args) PyMem_Free(argv);
    Py_XDECREF(value);
    Py_XDECREF(table);
    Py_XDECREF(pyctx);
    Py_XDECREF(binding);
    PyGILState_Release(gil);
    return error;
}

/* Resource destructor: data is a (drop, type_id) tuple; drop(type_id, ctx, rep) -> error address. */
static void *resource_drop(void *data, void *ctx, uint32_t rep) {
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *plan = (PyObject *)data;
    void *error = NULL;
    PyObject *r = PyObject_CallFunction(PyTuple_GET_ITEM(plan, 0), "OKI", PyTuple_GET_ITEM(plan, 1),
                                        (unsigned long long)(uintptr_t)ctx, (unsigned int)rep);
    if (r != NULL) {
        error = PyLong_AsVoidPtr(r);
        Py_DECREF(r);
    }
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable(PyTuple_GET_ITEM(plan, 0));
        error = w_error_new("wasmhost: resource destructor failed");
    }
    PyGILState_Release(gil);
    return error;
}

/* -- guest calls, epochs, interruption -------------------------------------------- */

/* Per-store interruption state; data of the store's epoch-deadline callback. */
typedef struct {
    int flag;
    char message[240];
} interrupt_state;

static void *epoch_reached(void *ctx, void *data, uint64_t *delta, uint8_t *kind) {
    (void)ctx;
    interrupt_state *state = data;
    if (__atomic_load_n(&state->flag, __ATOMIC_ACQUIRE))
        return w_error_new(state->message);
    if (in_guest_call && released == NULL) {
        /* The call has run for a tick: let the rest run without the GIL. */
        released = PyEval_SaveThread();
    }
    *delta = 1;
    *kind = 0; /* WASMTIME_UPDATE_DEADLINE_CONTINUE */
    return NULL;
}

static PyObject *py_interrupt_state_new(PyObject *self, PyObject *noargs) {
    interrupt_state *state = PyMem_RawCalloc(1, sizeof(interrupt_state));
    if (state == NULL) return PyErr_NoMemory();
    return PyLong_FromVoidPtr(state);
}

static PyObject *py_interrupt_state_free(PyObject *self, PyObject *address) {
    PyMem_RawFree(PyLong_AsVoidPtr(address));
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_interrupt(PyObject *self, PyObject *args) {
    PyObject *address;
    const char *reason;
    if (!PyArg_ParseTuple(args, "Os", &address, &reason)) return NULL;
    interrupt_state *state = PyLong_AsVoidPtr(address);
    if (state == NULL) return NULL;
    if (!__atomic_load_n(&state->flag, __ATOMIC_ACQUIRE)) {
        snprintf(state->message, sizeof state->message, "interrupted: %s", reason);
        __atomic_store_n(&state->flag, 1, __ATOMIC_RELEASE);
    }
    Py_RETURN_NONE;
}

/* Call a component function with the GIL held until it returns or `hold_ticks`
 * epoch ticks pass, whichever is first (then epoch_reached drops it); with
 * `hold_ticks` 0 the GIL is dropped at once, as ctypes calls do. */
static void *call_holding_gil(void *func, void *ctx, val *args, size_t nargs, unsigned long long hold_ticks) {
    /* The deadline is relative to now: an idle instance's stale deadline would
     * otherwise fire (and drop the GIL) at the first instruction. */
    w_set_epoch_deadline(ctx, hold_ticks > 0 ? hold_ticks : 1);
    in_guest_call = 1;
    released = hold_ticks > 0 ? NULL : PyEval_SaveThread();
    void *error = w_func_call(func, ctx, args, nargs, NULL, 0);
    if (released != NULL) {
        PyEval_RestoreThread(released);
        released = NULL;
    }
    in_guest_call = 0;
    return error;
}

/* call_handler(func, ctx, table, request, request_type, outparam, outparam_type, hold_ticks)
 * -> error address (0 on success): wasi:http's handle(own<incoming-request>,
 * own<response-outparam>), the two host objects put in `table` as new handles. */
static PyObject *py_call_handler(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 8) return PyErr_Format(PyExc_TypeError, "call_handler takes 8 arguments");
    void *func = PyLong_AsVoidPtr(argv[0]);
    void *ctx = PyLong_AsVoidPtr(argv[1]);
    uint32_t request_type = (uint32_t)PyLong_AsUnsignedLong(argv[4]);
    uint32_t outparam_type = (uint32_t)PyLong_AsUnsignedLong(argv[6]);
    unsigned long long hold_ticks = PyLong_AsUnsignedLongLong(argv[7]);
    if (PyErr_Occurred()) return NULL;
    if (in_guest_call) return PyErr_Format(PyExc_RuntimeError, "call_handler re-entered on one thread");
    call_env env = {ctx, argv[2]};
    val args[2];
    if (lower_own(&env, argv[3], request_type, &args[0]) < 0) return NULL;
    if (lower_own(&env, argv[5], outparam_type, &args[1]) < 0) {
        w_resource_any_delete(args[0].of.resource);
        return NULL;
    }
    void *error = call_holding_gil(func, ctx, args, 2, hold_ticks);
    w_resource_any_delete(args[0].of.resource);
    w_resource_any_delete(args[1].of.resource);
    return PyLong_FromVoidPtr(error);
}

/* -- the epoch ticker ----------------------------------------------------------------- */

typedef struct {
    pthread_t thread;
    void *engine;
    long tick_ns;
    int stop;
} ticker;

static void *ticker_main(void *arg) {
    ticker *t = arg;
    struct timespec pause = {t->tick_ns / 1000000000L, t->tick_ns % 1000000000L};
    while (!__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE)) {
        nanosleep(&pause, NULL);
        w_increment_epoch(t->engine);
    }
    return NULL;
}

static PyObject *py_ticker_start(PyObject *self, PyObject *args) {
    PyObject *engine;
    long tick_ns;
    if (!PyArg_ParseTuple(args, "Ol", &engine, &tick_ns)) return NULL;
    ticker *t = PyMem_RawCalloc(1, sizeof(ticker));
    if (t == NULL) return PyErr_NoMemory();
    t->engine = PyLong_AsVoidPtr(engine);
    t->tick_ns = tick_ns > 0 ? tick_ns : 1000000;
    if (pthread_create(&t->thread, NULL, ticker_main, t) != 0) {
        PyMem_RawFree(t);
        return PyErr_Format(PyExc_OSError, "cannot start the epoch ticker thread");
    }
    return PyLong_FromVoidPtr(t);
}

static PyObject *py_ticker_stop(PyObject *self, PyObject *address) {
    ticker *t = PyLong_AsVoidPtr(address);
    if (t == NULL) return NULL;
    __atomic_store_n(&t->stop, 1, __ATOMIC_RELEASE);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(t->thread, NULL);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(t);
    Py_RETURN_NONE;
}

/* -- init ---------------------------------------------------------------------------- */

static int take_pointer(PyObject *table, const char *name, void **out) {
    PyObject *value = PyDict_GetItemString(table, name);
    if (value == NULL) {
        PyErr_Format(PyExc_KeyError, "missing wasmtime entry point %s", name);
        return -1;
    }
    *out = PyLong_AsVoidPtr(value);
    if (*out == NULL) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "null entry point %s", name);
        return -1;
    }
    return 0;
}

/* init(entry_points: dict[str, int], kinds: tuple[int, ...], Ok, Err, Case, Trap, HostResource) */
static PyObject *py_init(PyObject *self, PyObject *args) {
    PyObject *table, *kinds;
    PyObject *ok, *err, *case_, *trap, *resource;
    if (!PyArg_ParseTuple(args, "O!O!OOOOO", &PyDict_Type, &table, &PyTuple_Type, &kinds,
                          &ok, &err, &case_, &trap, &resource))
        return NULL;
    if (PyTuple_GET_SIZE(kinds) != T_BYTES) return PyErr_Format(PyExc_ValueError, "expected %d kinds", T_BYTES);
    for (int i = 0; i < T_BYTES; i++) {
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(kinds, i));
        if (kind < 0 || kind > 255) return PyErr_Format(PyExc_ValueError, "bad kind");
        KIND[i] = (uint8_t)kind;
    }
    struct { const char *name; void **slot; } points[] = {
        {"wasm_byte_vec_new", (void **)&w_byte_vec_new},
        {"wasm_byte_vec_delete", (void **)&w_byte_vec_delete},
        {"wasmtime_component_vallist_new_uninit", (void **)&w_vallist_new_uninit},
        {"wasmtime_component_valtuple_new_uninit", (void **)&w_valtuple_new_uninit},
        {"wasmtime_component_valrecord_new_uninit", (void **)&w_valrecord_new_uninit},
        {"wasmtime_component_valflags_new_uninit", (void **)&w_valflags_new_uninit},
        {"wasmtime_component_val_new", (void **)&w_val_new},
        {"wasmtime_component_resource_host_new", (void **)&w_resource_host_new},
        {"wasmtime_component_resource_host_rep", (void **)&w_resource_host_rep},
        {"wasmtime_component_resource_host_delete", (void **)&w_resource_host_delete},
        {"wasmtime_component_resource_host_to_any", (void **)&w_resource_host_to_any},
        {"wasmtime_component_resource_any_to_host", (void **)&w_resource_any_to_host},
        {"wasmtime_component_resource_any_delete", (void **)&w_resource_any_delete},
        {"wasmtime_error_new", (void **)&w_error_new},
        {"wasmtime_error_message", (void **)&w_error_message},
        {"wasmtime_error_delete", (void **)&w_error_delete},
        {"wasmtime_component_func_call", (void **)&w_func_call},
        {"wasmtime_engine_increment_epoch", (void **)&w_increment_epoch},
        {"wasmtime_context_set_epoch_deadline", (void **)&w_set_epoch_deadline},
    };
    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++)
        if (take_pointer(table, points[i].name, points[i].slot) < 0) return NULL;
    Py_XSETREF(OkType, Py_NewRef(ok));
    Py_XSETREF(ErrType, Py_NewRef(err));
    Py_XSETREF(CaseType, Py_NewRef(case_));
    Py_XSETREF(TrapType, Py_NewRef(trap));
    Py_XSETREF(HostResourceType, Py_NewRef(resource));
    initialized = 1;
    Py_RETURN_NONE;
}

static PyObject *py_addresses(PyObject *self, PyObject *noargs) {
    if (!initialized) return PyErr_Format(PyExc_RuntimeError, "wasmhost._native.init() was not called");
    return Py_BuildValue("{s:K,s:K,s:K}",
        "host_call", (unsigned long long)(uintptr_t)host_call,
        "resource_drop", (unsigned long long)(uintptr_t)resource_drop,
        "epoch_reached", (unsigned long long)(uintptr_t)epoch_reached);
}

static PyMethodDef methods[] = {
    {"init", py_init, METH_VARARGS, "Give the module wasmtime's entry points, value kinds and value classes."},
    {"addresses", py_addresses, METH_NOARGS, "C addresses of the host_call, resource_drop and epoch_reached callbacks."},
    {"call_handler", (PyCFunction)(void (*)(void))py_call_handler, METH_FASTCALL,
     "call_handler(func, ctx, table, request, request_type, outparam, outparam_type, hold_ticks) -> error address."},
    {"interrupt_state_new", py_interrupt_state_new, METH_NOARGS, "Allocate a store's interruption state."},
    {"interrupt_state_free", py_interrupt_state_free, METH_O, "Free an interruption state."},
    {"interrupt", py_interrupt, METH_VARARGS, "interrupt(state, reason): the store traps at its next epoch tick."},
    {"ticker_start", py_ticker_start, METH_VARARGS, "ticker_start(engine, tick_ns) -> ticker address."},
    {"ticker_stop", py_ticker_stop, METH_O, "Stop and free a ticker."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wasmhost.binding._native", "The compiled hot path of wasmhost's binding layer.", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    s_ctx = PyUnicode_InternFromString("ctx");
    s_table = PyUnicode_InternFromString("table");
    s_profile = PyUnicode_InternFromString("profile");
    s_get = PyUnicode_InternFromString("get");
    s_take = PyUnicode_InternFromString("take");
    s_insert = PyUnicode_InternFromString("insert");
    s_value = PyUnicode_InternFromString("value");
    return PyModule_Create(&module);
}

/* wasmhost._native: lifting (wasmtime val -> Python) and lowering (Python -> val),
 * driven by the spec tuples native.py builds once per WIT type. */
#include "_native.h"

/* -- helpers ---------------------------------------------------------------- */

PyObject *trap_from_error(void *error, const char *what) {
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


static PyObject *lift_payload(PyObject *spec, const val *payload, call_env *env) {
    if (spec == Py_None || payload == NULL)
        Py_RETURN_NONE;
    return lift(spec, payload, env);
}

PyObject *lift(PyObject *spec, const val *v, call_env *env) {
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


/* Lower `value` into a new heap val (wasmtime takes ownership). */
int lower_boxed(PyObject *spec, PyObject *value, val **out, call_env *env) {
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
int lower_own(call_env *env, PyObject *value, uint32_t type_id, val *v) {
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

int lower(PyObject *spec, PyObject *value, val *v, call_env *env) {
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


/* Shared by the compiled binding's sources (_native.c, _native_values.c):
 * wasmtime's component value layout, wasmtime entry points and the Python
 * classes of the value mapping, all set once by init(). */
#ifndef WASMHOST_NATIVE_H
#define WASMHOST_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

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
extern uint8_t KIND[T_COUNT];

/* -- wasmtime entry points (given by init) -------------------------------- */

extern void (*w_byte_vec_new)(byte_vec *, size_t, const char *);
extern void (*w_byte_vec_delete)(byte_vec *);
extern void (*w_vallist_new_uninit)(void *, size_t);
extern void (*w_valtuple_new_uninit)(void *, size_t);
extern void (*w_valrecord_new_uninit)(void *, size_t);
extern void (*w_valflags_new_uninit)(void *, size_t);
extern val *(*w_val_new)(val *);
extern void *(*w_resource_host_new)(bool, uint32_t, uint32_t);
extern uint32_t (*w_resource_host_rep)(void *);
extern void (*w_resource_host_delete)(void *);
extern void *(*w_resource_host_to_any)(void *, void *, void **);
extern void *(*w_resource_any_to_host)(void *, void *, void **);
extern void (*w_resource_any_delete)(void *);
extern void *(*w_error_new)(const char *);
extern void (*w_error_message)(void *, byte_vec *);
extern void (*w_error_delete)(void *);
extern void *(*w_func_call)(void *, void *, val *, size_t, val *, size_t);
extern void (*w_set_epoch_deadline)(void *, uint64_t);
extern void (*w_increment_epoch)(void *);

/* Python classes of the value mapping (wasmhost.wasi.interface), given by init. */
extern PyObject *OkType, *ErrType, *CaseType, *TrapType, *HostResourceType;
extern PyObject *s_ctx, *s_table, *s_profile, *s_get, *s_take, *s_insert, *s_value;

typedef struct {
    void *ctx;          /* wasmtime_context_t * of the calling store */
    PyObject *table;    /* its ResourceTable */
} call_env;

/* _native_values.c: converters driven by specs (see native.py). */
PyObject *trap_from_error(void *error, const char *what);
PyObject *lift(PyObject *spec, const val *v, call_env *env);
int lower(PyObject *spec, PyObject *value, val *v, call_env *env);
int lower_boxed(PyObject *spec, PyObject *value, val **out, call_env *env);
int lower_own(call_env *env, PyObject *value, uint32_t type_id, val *v);

#endif

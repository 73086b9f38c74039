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
#include "_native.h"
#include <pthread.h>
#include <time.h>

uint8_t KIND[T_COUNT];

/* -- wasmtime entry points (given by init) -------------------------------- */

void (*w_byte_vec_new)(byte_vec *, size_t, const char *);
void (*w_byte_vec_delete)(byte_vec *);
void (*w_vallist_new_uninit)(void *, size_t);
void (*w_valtuple_new_uninit)(void *, size_t);
void (*w_valrecord_new_uninit)(void *, size_t);
void (*w_valflags_new_uninit)(void *, size_t);
val *(*w_val_new)(val *);
void *(*w_resource_host_new)(bool, uint32_t, uint32_t);
uint32_t (*w_resource_host_rep)(void *);
void (*w_resource_host_delete)(void *);
void *(*w_resource_host_to_any)(void *, void *, void **);
void *(*w_resource_any_to_host)(void *, void *, void **);
void (*w_resource_any_delete)(void *);
void *(*w_error_new)(const char *);
void (*w_error_message)(void *, byte_vec *);
void (*w_error_delete)(void *);
void *(*w_func_call)(void *, void *, val *, size_t, val *, size_t);
void (*w_set_epoch_deadline)(void *, uint64_t);
void (*w_increment_epoch)(void *);

/* Python classes of the value mapping (wasmhost.wasi.interface), given by init. */
PyObject *OkType, *ErrType, *CaseType, *TrapType, *HostResourceType;
PyObject *s_ctx, *s_table, *s_profile, *s_get, *s_take, *s_insert, *s_value;
static int initialized;

/* -- GIL handling for guest calls ------------------------------------------ */

/* Set while this thread is inside call_holding_gil(); `released` holds the thread
 * state once the epoch callback has dropped the GIL for the rest of the call. */
static __thread int in_guest_call;
static __thread PyThreadState *released;
/* Called (with the GIL) when the call has run past its GIL hold, before the GIL
 * is dropped: a thread that drives an event loop hands the driving over. */
static __thread PyObject *on_long_call;
/* The call's GIL hold in epoch ticks, and whether the host call now running asked
 * (hold_gil_again) to hold the GIL again once it returns to wasm. */
static __thread unsigned long long call_hold_ticks;
static __thread int hold_again;

static void run_long_call_hook(void) {
    PyObject *hook = on_long_call;
    if (hook == NULL) return;
    on_long_call = NULL; /* once per call */
    PyObject *result = PyObject_CallNoArgs(hook);
    if (result == NULL) PyErr_WriteUnraisable(hook);
    Py_XDECREF(result);
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
    if (hold_again) {
        /* The host call waited (for I/O, a timer): what follows is like the start of
         * a call, so the GIL is held again for its first ticks instead of being
         * taken back from the event loop for every host call that comes next. */
        hold_again = 0;
        if (released != NULL) {
            PyEval_RestoreThread(released);
            released = NULL;
        }
        /* Ticks passed while it waited: without a new deadline the next epoch
         * check in wasm would drop the GIL at once. */
        w_set_epoch_deadline(ctx, call_hold_ticks);
    }
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
        run_long_call_hook();
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

/* hold_gil_again(): from a host function that waited, in a guest call that holds
 * the GIL for its first ticks: when the host call returns to wasm, hold the GIL
 * again for that many ticks from now. A no-op elsewhere. */
static PyObject *py_hold_gil_again(PyObject *self, PyObject *noargs) {
    if (in_guest_call && call_hold_ticks > 0) hold_again = 1;
    Py_RETURN_NONE;
}

/* Call a component function with the GIL held until it returns or `hold_ticks`
 * epoch ticks pass, whichever is first (then epoch_reached drops it); with
 * `hold_ticks` 0 the GIL is dropped at once, as ctypes calls do. */
static void *call_holding_gil(void *func, void *ctx, val *args, size_t nargs, unsigned long long hold_ticks,
                              PyObject *long_call_hook) {
    /* The deadline is relative to now: an idle instance's stale deadline would
     * otherwise fire (and drop the GIL) at the first instruction. */
    w_set_epoch_deadline(ctx, hold_ticks > 0 ? hold_ticks : 1);
    in_guest_call = 1;
    call_hold_ticks = hold_ticks;
    hold_again = 0;
    on_long_call = long_call_hook == Py_None ? NULL : long_call_hook;
    if (hold_ticks == 0) run_long_call_hook();
    released = hold_ticks > 0 ? NULL : PyEval_SaveThread();
    void *error = w_func_call(func, ctx, args, nargs, NULL, 0);
    if (released != NULL) {
        PyEval_RestoreThread(released);
        released = NULL;
    }
    in_guest_call = 0;
    on_long_call = NULL;
    return error;
}

/* call_handler(func, ctx, table, request, request_type, outparam, outparam_type, hold_ticks,
 *              on_long_call) -> error address (0 on success): wasi:http's
 * handle(own<incoming-request>, own<response-outparam>), the two host objects put
 * in `table` as new handles. `on_long_call` (or None) is called once the GIL hold
 * is over, before the GIL is dropped. */
static PyObject *py_call_handler(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 9) return PyErr_Format(PyExc_TypeError, "call_handler takes 9 arguments");
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
    void *error = call_holding_gil(func, ctx, args, 2, hold_ticks, argv[8]);
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
     "call_handler(func, ctx, table, request, request_type, outparam, outparam_type, hold_ticks, on_long_call)"
     " -> error address."},
    {"interrupt_state_new", py_interrupt_state_new, METH_NOARGS, "Allocate a store's interruption state."},
    {"interrupt_state_free", py_interrupt_state_free, METH_O, "Free an interruption state."},
    {"interrupt", py_interrupt, METH_VARARGS, "interrupt(state, reason): the store traps at its next epoch tick."},
    {"hold_gil_again", py_hold_gil_again, METH_NOARGS,
     "From a host function that waited: hold the GIL again, for the call's hold ticks, once it returns to wasm."},
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

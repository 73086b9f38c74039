;; wat-hello: a wasi:http/proxy component written by hand in the component
;; model's text format, with no toolchain at all (`wasm-tools parse` turns it
;; into a .wasm, and wasmtime also loads this text directly).
;;
;; It exports wasi:http/incoming-handler@0.2.12#handle and, for every request,
;; answers 200, `content-type: text/plain; charset=utf-8`, and the text at
;; offset 1024 below (sent with chunked transfer encoding).
;;
;; This same text is wasmhost/demo.wat, the component wasmhost serves when it
;; is given none; tests/test_guest_build.py checks that the two stay equal.
;;
;; Layout of the core module's memory:
;;      256  64-byte return area for the lowered imports that return via memory
;;      512  the header list given to fields.from-list: one (name, value) pair
;;      768  "content-type"
;;      784  "text/plain; charset=utf-8"
;;     1024  the response body, NUL-terminated (its length is found at run time)
;;     4096  scratch heap for `realloc` (only used if the host lowers an
;;           error-code with strings into us); reset at each request
(component
  ;; ------------------------------------------------------------ imports
  (import "wasi:io/error@0.2.12" (instance $io-error
    (export "error" (type (sub resource)))
  ))
  (alias export $io-error "error" (type $error))

  (import "wasi:io/streams@0.2.12" (instance $io-streams
    (export "output-stream" (type $output-stream (sub resource)))
    (alias outer 1 $error (type $error'))
    (export "error" (type $error'' (eq $error')))
    (type $stream-error (variant
      (case "last-operation-failed" (own $error''))
      (case "closed")))
    (export "stream-error" (type $stream-error' (eq $stream-error)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $output-stream)) (param "contents" (list u8))
            (result (result (error $stream-error')))))
  ))
  (alias export $io-streams "output-stream" (type $output-stream))

  (import "wasi:http/types@0.2.12" (instance $http-types
    (alias outer 1 $output-stream (type $output-stream'))
    (export "output-stream" (type $output-stream'' (eq $output-stream')))

    ;; error-code: it must be spelled out in full, as the structural type of
    ;; response-outparam.set and outgoing-body.finish depends on it.
    (type $dns-error-payload (record
      (field "rcode" (option string))
      (field "info-code" (option u16))))
    (export "DNS-error-payload" (type $dns-error-payload' (eq $dns-error-payload)))
    (type $tls-alert-received-payload (record
      (field "alert-id" (option u8))
      (field "alert-message" (option string))))
    (export "TLS-alert-received-payload"
      (type $tls-alert-received-payload' (eq $tls-alert-received-payload)))
    (type $field-size-payload (record
      (field "field-name" (option string))
      (field "field-size" (option u32))))
    (export "field-size-payload" (type $field-size-payload' (eq $field-size-payload)))
    (type $error-code (variant
      (case "DNS-timeout")
      (case "DNS-error" $dns-error-payload')
      (case "destination-not-found")
      (case "destination-unavailable")
      (case "destination-IP-prohibited")
      (case "destination-IP-unroutable")
      (case "connection-refused")
      (case "connection-terminated")
      (case "connection-timeout")
      (case "connection-read-timeout")
      (case "connection-write-timeout")
      (case "connection-limit-reached")
      (case "TLS-protocol-error")
      (case "TLS-certificate-error")
      (case "TLS-alert-received" $tls-alert-received-payload')
      (case "HTTP-request-denied")
      (case "HTTP-request-length-required")
      (case "HTTP-request-body-size" (option u64))
      (case "HTTP-request-method-invalid")
      (case "HTTP-request-URI-invalid")
      (case "HTTP-request-URI-too-long")
      (case "HTTP-request-header-section-size" (option u32))
      (case "HTTP-request-header-size" (option $field-size-payload'))
      (case "HTTP-request-trailer-section-size" (option u32))
      (case "HTTP-request-trailer-size" $field-size-payload')
      (case "HTTP-response-incomplete")
      (case "HTTP-response-header-section-size" (option u32))
      (case "HTTP-response-header-size" $field-size-payload')
      (case "HTTP-response-body-size" (option u64))
      (case "HTTP-response-trailer-section-size" (option u32))
      (case "HTTP-response-trailer-size" $field-size-payload')
      (case "HTTP-response-transfer-coding" (option string))
      (case "HTTP-response-content-coding" (option string))
      (case "HTTP-response-timeout")
      (case "HTTP-upgrade-failed")
      (case "HTTP-protocol-error")
      (case "loop-detected")
      (case "configuration-error")
      (case "internal-error" (option string))))
    (export "error-code" (type $error-code' (eq $error-code)))
    (type $header-error (variant
      (case "invalid-syntax")
      (case "forbidden")
      (case "immutable")))
    (export "header-error" (type $header-error' (eq $header-error)))

    (export "fields" (type $fields (sub resource)))
    (export "incoming-request" (type $incoming-request (sub resource)))
    (export "outgoing-body" (type $outgoing-body (sub resource)))
    (export "response-outparam" (type $response-outparam (sub resource)))
    (export "outgoing-response" (type $outgoing-response (sub resource)))

    (export "[static]fields.from-list"
      (func (param "entries" (list (tuple string (list u8))))
            (result (result (own $fields) (error $header-error')))))
    (export "[constructor]outgoing-response"
      (func (param "headers" (own $fields)) (result (own $outgoing-response))))
    (export "[method]outgoing-response.body"
      (func (param "self" (borrow $outgoing-response))
            (result (result (own $outgoing-body)))))
    (export "[static]response-outparam.set"
      (func (param "param" (own $response-outparam))
            (param "response" (result (own $outgoing-response) (error $error-code')))))
    (export "[method]outgoing-body.write"
      (func (param "self" (borrow $outgoing-body))
            (result (result (own $output-stream'')))))
    (export "[static]outgoing-body.finish"
      (func (param "this" (own $outgoing-body)) (param "trailers" (option (own $fields)))
            (result (result (error $error-code')))))
  ))
  (alias export $http-types "incoming-request" (type $incoming-request))
  (alias export $http-types "response-outparam" (type $response-outparam))
  (alias export $http-types "outgoing-body" (type $outgoing-body))

  ;; ------------------------------------------------------------ core code
  ;; $Mem owns the linear memory and `realloc`; it is instantiated first so
  ;; that the lowered imports $Main needs can name its memory.
  (core module $Mem
    (memory (export "memory") 1)
    (global (export "heap") (mut i32) (i32.const 4096))
    (func (export "realloc")
      (param $old i32) (param $old-size i32) (param $align i32) (param $new-size i32)
      (result i32)
      (local $ptr i32) (local $end i32) (local $pages i32)
      ;; bump allocation: align the heap pointer up, then advance it
      (local.set $ptr
        (i32.and
          (i32.add (global.get 0) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (local.set $end (i32.add (local.get $ptr) (local.get $new-size)))
      (global.set 0 (local.get $end))
      ;; grow the memory if the new end is beyond it
      (local.set $pages
        (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16)))
      (if (i32.gt_u (local.get $pages) (memory.size))
        (then
          (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
            (then unreachable))))
      ;; a real realloc keeps the old contents (the canonical ABI only ever
      ;; asks for fresh blocks, but stay correct anyway)
      (if (local.get $old)
        (then
          (memory.copy (local.get $ptr) (local.get $old)
            (select (local.get $old-size) (local.get $new-size)
              (i32.lt_u (local.get $old-size) (local.get $new-size))))))
      (local.get $ptr))
  )

  (core module $Main
    (import "mem" "memory" (memory 1))
    (import "mem" "heap" (global $heap (mut i32)))
    (import "http" "fields.from-list" (func $fields-from-list (param i32 i32 i32)))
    (import "http" "outgoing-response.new" (func $outgoing-response-new (param i32) (result i32)))
    (import "http" "outgoing-response.body" (func $outgoing-response-body (param i32 i32)))
    ;; (param, result discriminant, then result<own, error-code>'s flattened payload)
    (import "http" "response-outparam.set"
      (func $response-outparam-set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
    (import "http" "outgoing-body.write" (func $outgoing-body-write (param i32 i32)))
    (import "http" "outgoing-body.finish" (func $outgoing-body-finish (param i32 i32 i32 i32)))
    (import "http" "drop incoming-request" (func $drop-incoming-request (param i32)))
    (import "http" "drop outgoing-body" (func $drop-outgoing-body (param i32)))
    (import "io" "output-stream.blocking-write-and-flush" (func $write (param i32 i32 i32 i32)))
    (import "io" "drop output-stream" (func $drop-output-stream (param i32)))
    (import "io" "drop error" (func $drop-error (param i32)))

    (func (export "handle") (param $request i32) (param $response-out i32)
      (local $response i32) (local $body i32) (local $stream i32) (local $len i32)
      (global.set $heap (i32.const 4096))
      (call $drop-incoming-request (local.get $request))

      ;; response = outgoing-response(fields.from-list([("content-type", ...)]))
      (call $fields-from-list (i32.const 512) (i32.const 1) (i32.const 256))
      (if (i32.load8_u (i32.const 256)) (then unreachable))
      (local.set $response (call $outgoing-response-new (i32.load (i32.const 260))))
      (call $outgoing-response-body (local.get $response) (i32.const 256))
      (if (i32.load8_u (i32.const 256)) (then unreachable))
      (local.set $body (i32.load (i32.const 260)))

      ;; response-outparam.set(response-out, ok(response)); status is 200 by default
      (call $response-outparam-set (local.get $response-out)
        (i32.const 0) (local.get $response)
        (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))

      (call $outgoing-body-write (local.get $body) (i32.const 256))
      (if (i32.load8_u (i32.const 256)) (then unreachable))
      (local.set $stream (i32.load (i32.const 260)))

      ;; len = strlen(1024)
      (block $done
        (loop $scan
          (br_if $done (i32.eqz (i32.load8_u (i32.add (i32.const 1024) (local.get $len)))))
          (local.set $len (i32.add (local.get $len) (i32.const 1)))
          (br $scan)))

      (call $write (local.get $stream) (i32.const 1024) (local.get $len) (i32.const 256))
      (if (i32.load8_u (i32.const 256))
        (then
          ;; the client went away: stream-error at 260; case 0
          ;; (last-operation-failed) carries an own<error> at 264
          (if (i32.eqz (i32.load8_u (i32.const 260)))
            (then (call $drop-error (i32.load (i32.const 264)))))
          (call $drop-output-stream (local.get $stream))
          (call $drop-outgoing-body (local.get $body))
          (return)))

      (call $drop-output-stream (local.get $stream))
      ;; outgoing-body.finish(body, none); an error here has nobody to report to
      (call $outgoing-body-finish (local.get $body) (i32.const 0) (i32.const 0) (i32.const 256)))

    ;; [("content-type", "text/plain; charset=utf-8")] as list<tuple<string, list<u8>>>
    (data (i32.const 512) "\00\03\00\00" "\0c\00\00\00" "\10\03\00\00" "\19\00\00\00")
    (data (i32.const 768) "content-type")
    (data (i32.const 784) "text/plain; charset=utf-8")
    (data (i32.const 1024)
      "Hello from wasmhost!\n"
      "\n"
      "This is the built-in demo component: a wasi:http/proxy component\n"
      "written by hand in WebAssembly text. Give wasmhost a component\n"
      "of your own to serve it instead.\n"
      "\00")
  )

  ;; ------------------------------------------------------------ wiring
  (core instance $mem (instantiate $Mem))
  (alias core export $mem "memory" (core memory $memory))
  (alias core export $mem "realloc" (core func $realloc))

  (core func $fields-from-list
    (canon lower (func $http-types "[static]fields.from-list") (memory $memory)))
  (core func $outgoing-response-new
    (canon lower (func $http-types "[constructor]outgoing-response")))
  (core func $outgoing-response-body
    (canon lower (func $http-types "[method]outgoing-response.body") (memory $memory)))
  (core func $response-outparam-set
    (canon lower (func $http-types "[static]response-outparam.set") (memory $memory)))
  (core func $outgoing-body-write
    (canon lower (func $http-types "[method]outgoing-body.write") (memory $memory)))
  (core func $outgoing-body-finish
    (canon lower (func $http-types "[static]outgoing-body.finish")
      (memory $memory) (realloc $realloc)))
  (core func $drop-incoming-request (canon resource.drop $incoming-request))
  (core func $drop-outgoing-body (canon resource.drop $outgoing-body))
  (core func $write
    (canon lower (func $io-streams "[method]output-stream.blocking-write-and-flush")
      (memory $memory)))
  (core func $drop-output-stream (canon resource.drop $output-stream))
  (core func $drop-error (canon resource.drop $error))

  (core instance $main (instantiate $Main
    (with "mem" (instance $mem))
    (with "http" (instance
      (export "fields.from-list" (func $fields-from-list))
      (export "outgoing-response.new" (func $outgoing-response-new))
      (export "outgoing-response.body" (func $outgoing-response-body))
      (export "response-outparam.set" (func $response-outparam-set))
      (export "outgoing-body.write" (func $outgoing-body-write))
      (export "outgoing-body.finish" (func $outgoing-body-finish))
      (export "drop incoming-request" (func $drop-incoming-request))
      (export "drop outgoing-body" (func $drop-outgoing-body))))
    (with "io" (instance
      (export "output-stream.blocking-write-and-flush" (func $write))
      (export "drop output-stream" (func $drop-output-stream))
      (export "drop error" (func $drop-error))))
  ))

  ;; ------------------------------------------------------------ export
  (func $handle
    (param "request" (own $incoming-request))
    (param "response-out" (own $response-outparam))
    (canon lift (core func $main "handle")))
  ;; The instance exports only `handle`: its parameter types are the ones
  ;; imported from wasi:http/types (what WIT's `use types.{...}` means).
  (instance $incoming-handler
    (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.12" (instance $incoming-handler))
)

;; hostile_answer: a cc-lb plugin declaring filter, shape and observe whose answers the
;; fuzzer (fuzz/fuzz_host.py) controls through the request it sends.
;;
;; Without a marker in its input it is a correct plugin, so it passes the admission
;; probe: filter answers an empty FilterResponse (8 zero bytes at 512), shape a valid
;; ShapeResponse (100 bytes at 128: url https://api.anthropic.com/v1/messages, method
;; POST, header x-fuzz: 1, body "ok"), observe (0, 0).
;;
;; With "FUZZCTRL" somewhere in its input (the fuzzer puts it in the request body), the
;; bytes after it are a control block; with "FUZZHEXC" they are the same block written
;; as lowercase hex (observe events have no bytes field, only UTF-8 strings):
;;
;;   mode u32 | out_ptr u32 | out_len u32 | payload_len u32 | payload bytes
;;
;; The payload is copied to a fresh 16-aligned buffer in guest memory. mode:
;;   bits 0-3   action: 0 REL  answer (buffer + out_ptr, out_len)
;;                      1 ABS  answer (out_ptr, out_len)
;;                      2 END  answer (memory size in bytes - out_ptr, out_len)
;;                      3 the marker-less answer; 4 trap (unreachable); 5 spin forever
;;                      6 TAIL the payload moved to the very end of memory, answer
;;                        (that copy + out_ptr, out_len): a read past the answer faults
;;                      (7..15: as 3)
;;   bits 4-7   the NEXT cc_lb_alloc: 1 returns 0, 2 a misaligned in-bounds pointer,
;;              3 memory end - 16, 4 0xfffffff0, 5 traps, 6 grows 64 pages first
;;   bits 8-15  pages to grow memory by before answering
;;   bit 16     ask for 60000 more pages first (refused under any sane limit; ignored)
;;   bits 17-18 the NEXT cc_lb_free (the host calls it in reuse mode, for this very
;;              answer): 1 traps, 2 spins forever
;; A block shorter than 16 bytes is ignored; payload_len is clamped to what follows.
;;
;; The cc_lb.plugin.v1 metadata and cc_lb.schema.*.v1 fingerprint sections are appended
;; by fuzz_host.guest_wasm(), from cclb_wire.FINGERPRINTS (never typed by hand).
(module
  (memory (export "memory") 1)

  ;; the ShapeResponse answer; fuzz_host.py checks these bytes against cclb_wire.encode
  (data (i32.const 128) "https://api.anthropic.com/v1/messagesPOSTx-fuzz1\f9\ff\ff\ff\06\00\00\00\f7\ff\ff\ff\01\00\00\00ok\00\00\bc\ff\ff\ff%\00\00\00\d9\ff\ff\ff\04\00\00\00\dc\ff\ff\ff\01\00\00\00\e4\ff\ff\ff\02\00\00\00")

  ;; arena allocator from 1024 up; the first cc_lb_alloc after a hook call empties it
  ;; (the host has read and freed the previous answer by then)
  (global $top (mut i32) (i32.const 1024))
  (global $reset (mut i32) (i32.const 0))
  (global $next_alloc (mut i32) (i32.const 0))
  (global $next_free (mut i32) (i32.const 0))
  (global $hex (mut i32) (i32.const 0))

  ;; 16-aligned block of $size bytes, memory grown on demand; 0 on failure
  (func $bump (param $size i32) (result i32)
    (local $p i32) (local $end i32) (local $pages i32)
    (local.set $p (i32.and (i32.add (global.get $top) (i32.const 15)) (i32.const -16)))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (if (i32.or (i32.lt_u (local.get $end) (local.get $p))
                (i32.gt_u (local.get $end) (i32.const 0xfff00000)))
      (then (return (i32.const 0))))
    (local.set $pages (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $top (local.get $end))
    (local.get $p))

  (func (export "cc_lb_alloc") (param $size i32) (param $align i32) (result i32)
    (local $mode i32) (local $p i32)
    (if (global.get $reset)
      (then (global.set $top (i32.const 1024)) (global.set $reset (i32.const 0))))
    (local.set $mode (global.get $next_alloc))
    (global.set $next_alloc (i32.const 0))
    (block $normal
      (block $m6 (block $m5 (block $m4 (block $m3 (block $m2 (block $m1
        (br_table $normal $m1 $m2 $m3 $m4 $m5 $m6 $normal (local.get $mode)))
        ;; 1: null
        (return (i32.const 0)))
        ;; 2: misaligned, in bounds
        (local.set $p (call $bump (i32.add (local.get $size) (i32.const 1))))
        (if (i32.eqz (local.get $p)) (then (return (i32.const 0))))
        (return (i32.add (local.get $p) (i32.const 1))))
        ;; 3: aligned, 16 bytes before the end of memory
        (return (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 16))))
        ;; 4: aligned, far past the end
        (return (i32.const 0xfffffff0)))
        ;; 5: trap
        unreachable)
      ;; 6: grow (the host's view of memory moves or grows), then allocate normally
      (drop (memory.grow (i32.const 64))))
    (call $bump (local.get $size)))

  (func (export "cc_lb_free") (param $ptr i32) (param $len i32) (param $align i32)
    (local $mode i32)
    (local.set $mode (global.get $next_free))
    (global.set $next_free (i32.const 0))
    (if (i32.eq (local.get $mode) (i32.const 1)) (then unreachable))
    (if (i32.eq (local.get $mode) (i32.const 2)) (then (loop $spin (br $spin)))))

  ;; address of the first "FUZZCTRL" or "FUZZHEXC" in [p, p+len) ($hex tells which), or -1
  (func $find (param $p i32) (param $len i32) (result i32)
    (local $last i32) (local $word i64)
    (if (i32.lt_u (local.get $len) (i32.const 8)) (then (return (i32.const -1))))
    (local.set $last (i32.add (local.get $p) (i32.sub (local.get $len) (i32.const 8))))
    (loop $scan
      (local.set $word (i64.load (local.get $p)))
      (if (i64.eq (local.get $word) (i64.const 0x4c5254435a5a5546))  ;; "FUZZCTRL"
        (then (global.set $hex (i32.const 0)) (return (local.get $p))))
      (if (i64.eq (local.get $word) (i64.const 0x435845485a5a5546))  ;; "FUZZHEXC"
        (then (global.set $hex (i32.const 1)) (return (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $scan (i32.le_u (local.get $p) (local.get $last))))
    (i32.const -1))

  ;; value of a lowercase hex digit, or -1
  (func $digit (param $c i32) (result i32)
    (if (i32.lt_u (i32.sub (local.get $c) (i32.const 48)) (i32.const 10))
      (then (return (i32.sub (local.get $c) (i32.const 48)))))
    (if (i32.lt_u (i32.sub (local.get $c) (i32.const 97)) (i32.const 6))
      (then (return (i32.sub (local.get $c) (i32.const 87)))))
    (i32.const -1))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))

  ;; the marker-less answer of each hook (0 filter, 1 shape, 2 observe)
  (func $plain (param $kind i32) (result i64)
    (if (i32.eqz (local.get $kind)) (then (return (call $pack (i32.const 512) (i32.const 8)))))
    (if (i32.eq (local.get $kind) (i32.const 1)) (then (return (call $pack (i32.const 128) (i32.const 100)))))
    (i64.const 0))

  (func $answer (param $kind i32) (param $in i32) (param $len i32) (result i64)
    (local $at i32) (local $ctrl i32) (local $clen i32) (local $end i32) (local $n i32)
    (local $hi i32) (local $lo i32) (local $mode i32) (local $optr i32) (local $olen i32)
    (local $plen i32) (local $buf i32) (local $grow i32)
    (global.set $reset (i32.const 1))
    (local.set $end (i32.add (local.get $in) (local.get $len)))
    (local.set $at (call $find (local.get $in) (local.get $len)))
    (if (i32.eq (local.get $at) (i32.const -1)) (then (return (call $plain (local.get $kind)))))
    (local.set $ctrl (i32.add (local.get $at) (i32.const 8)))
    (local.set $clen (i32.sub (local.get $end) (local.get $ctrl)))
    (if (global.get $hex)
      (then
        ;; decode the hex digits that follow into a scratch buffer, up to the first non-digit
        (local.set $buf (call $bump (i32.shr_u (local.get $clen) (i32.const 1))))
        (if (i32.eqz (local.get $buf)) (then unreachable))
        (block $stop
          (loop $pair
            (br_if $stop (i32.lt_u (i32.sub (local.get $end) (local.get $ctrl)) (i32.const 2)))
            (local.set $hi (call $digit (i32.load8_u (local.get $ctrl))))
            (local.set $lo (call $digit (i32.load8_u offset=1 (local.get $ctrl))))
            (br_if $stop (i32.lt_s (i32.or (local.get $hi) (local.get $lo)) (i32.const 0)))
            (i32.store8 (i32.add (local.get $buf) (local.get $n))
                        (i32.or (i32.shl (local.get $hi) (i32.const 4)) (local.get $lo)))
            (local.set $n (i32.add (local.get $n) (i32.const 1)))
            (local.set $ctrl (i32.add (local.get $ctrl) (i32.const 2)))
            (br $pair)))
        (local.set $ctrl (local.get $buf))
        (local.set $clen (local.get $n))))
    (if (i32.lt_u (local.get $clen) (i32.const 16)) (then (return (call $plain (local.get $kind)))))
    (local.set $mode (i32.load (local.get $ctrl)))
    (local.set $optr (i32.load offset=4 (local.get $ctrl)))
    (local.set $olen (i32.load offset=8 (local.get $ctrl)))
    (local.set $plen (i32.load offset=12 (local.get $ctrl)))
    (if (i32.gt_u (local.get $plen) (i32.sub (local.get $clen) (i32.const 16)))
      (then (local.set $plen (i32.sub (local.get $clen) (i32.const 16)))))
    (local.set $buf (call $bump (local.get $plen)))
    (if (i32.eqz (local.get $buf)) (then unreachable))
    (memory.copy (local.get $buf) (i32.add (local.get $ctrl) (i32.const 16)) (local.get $plen))
    (global.set $next_alloc (i32.and (i32.shr_u (local.get $mode) (i32.const 4)) (i32.const 15)))
    (global.set $next_free (i32.and (i32.shr_u (local.get $mode) (i32.const 17)) (i32.const 3)))
    (local.set $grow (i32.and (i32.shr_u (local.get $mode) (i32.const 8)) (i32.const 255)))
    (if (local.get $grow) (then (drop (memory.grow (local.get $grow)))))
    (if (i32.and (local.get $mode) (i32.const 0x10000))
      (then (drop (memory.grow (i32.const 60000)))))
    (block $other
      (block $tail (block $spin (block $trap (block $static (block $end_rel (block $abs (block $rel
        (br_table $rel $abs $end_rel $static $trap $spin $tail $other (i32.and (local.get $mode) (i32.const 15))))
        (return (call $pack (i32.add (local.get $buf) (local.get $optr)) (local.get $olen))))
        (return (call $pack (local.get $optr) (local.get $olen))))
        (return (call $pack (i32.sub (i32.shl (memory.size) (i32.const 16)) (local.get $optr)) (local.get $olen))))
        (return (call $plain (local.get $kind))))
        unreachable)
        (loop $forever (br $forever)))
      ;; TAIL (memory.copy is a memmove: the copy may overlap its source)
      (local.set $buf (i32.sub (i32.shl (memory.size) (i32.const 16)) (local.get $plen)))
      (memory.copy (local.get $buf) (i32.add (local.get $ctrl) (i32.const 16)) (local.get $plen))
      (return (call $pack (i32.add (local.get $buf) (local.get $optr)) (local.get $olen))))
    (call $plain (local.get $kind)))

  (func (export "cc_lb_filter") (param i32 i32) (result i64)
    (call $answer (i32.const 0) (local.get 0) (local.get 1)))
  (func (export "cc_lb_shape") (param i32 i32) (result i64)
    (call $answer (i32.const 1) (local.get 0) (local.get 1)))
  (func (export "cc_lb_observe") (param i32 i32) (result i64)
    (call $answer (i32.const 2) (local.get 0) (local.get 1)))
)

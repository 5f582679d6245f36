/*
 * cache_aware_filter: a `filter` plugin that keeps the K candidates with the most
 * predicted cache-read tokens.
 *
 * K comes from the principal's claim `keep_k` (the claim value is JSON, e.g. `2`).
 * Missing claim: K = 1. A value that is not a JSON integer (a number with a
 * fraction of zeros only, like `2.0`, counts as that integer): K = 1. K is then
 * clamped to [0, number of candidates]. Ranking: more predicted_cache_read_tokens
 * first; equal counts keep their input order. One result per candidate, in input
 * order: decision `accept` with reason `top-K by predicted cache read tokens (N)`,
 * or decision `reject` with reason `outside top-K (N predicted cache read tokens)`.
 */
#include "cclb_guest.h"
#include "cclb_rank.h"

CCLB_PLUGIN_METADATA({
    "name": "cache-aware-filter",
    "version": "0.1.0",
    "description": "Keeps the upstream candidates with the most predicted cache-read tokens.",
    "usage": "Register for the filter slot. Set the principal claim keep_k (a JSON integer, default 1) to keep that many candidates.",
    "hooks": {
        "filter": {
            "wire_version": 1,
            "description": "Accepts the top keep_k candidates by predicted_cache_read_tokens (ties keep input order) and rejects the rest.",
            "usage": "Principal claim keep_k: how many candidates to keep (default 1; an invalid value counts as 1; clamped to the candidate count)."
        }
    }
});
CCLB_HOOK_SCHEMA(filter);

/* "outside top-4294967295 (4294967295 predicted cache read tokens)" is 63 bytes. */
#define REASON_MAX 80u

CCLB_EXPORT("cc_lb_filter") cclb_u64 cc_lb_filter(cclb_u32 in_ptr, cclb_u32 in_len) {
    cclb_filter_request req;
    cclb_read_filter_request(in_ptr, in_len, &req);

    cclb_u32 k = cclb_keep_k(req.principal, req.candidates.len);
    cclb_u64 out = cclb_rank_filter_response(req.candidates, k, REASON_MAX, "", 0, cclb_rank_tokens, cclb_rank_id);

    cclb_free_input(in_ptr);
    return out;
}

/*
 * cache_aware_filter_1_0: the cache-aware filter for the cc-lb 1.0 contract
 * (FilterRequest 1.0: 192-byte root with service_tier, canonical_model_id,
 * cache_pricing and the 80-byte candidates).
 *
 * Ranking as in cache_aware_filter.c (0.2): keep the K candidates with the most
 * predicted_cache_read_tokens; ties keep input order. K comes from the principal's
 * claim `keep_k` (a JSON integer; missing or invalid: 1; clamped to [0, n]).
 * cc-lb 1.0 sends an empty claims list to filters, so there K is 1.
 *
 * One result per candidate, in input order: decision `accept`, reason
 * `top-K by predicted cache read tokens (N)`, or decision `reject`, reason
 * `outside top-K (N predicted cache read tokens)`. When the request's
 * service_tier is "priority" and/or its cache_pricing has a
 * cache_read_micros_per_million (Some), every reason ends with
 * `; tier=priority cache_read=300000` (each part only when it applies, one space
 * between them), so a host's test can see both fields were read.
 * The answer is the unchanged 0.2 FilterResponse.
 */
#include "cclb_guest_1_0.h"
#include "cclb_rank.h"

CCLB_PLUGIN_METADATA({
    "name": "cache-aware-filter-1-0",
    "version": "0.1.0",
    "description": "Keeps the upstream candidates with the most predicted cache-read tokens (cc-lb 1.0 contract).",
    "usage": "Register for the filter slot of a cc-lb 1.0 host. Set the principal claim keep_k (a JSON integer, default 1) to keep that many candidates.",
    "hooks": {
        "filter": {
            "wire_version": 1,
            "mode": "active",
            "description": "Accepts the top keep_k candidates by predicted_cache_read_tokens (ties keep input order) and rejects the rest; reasons name the priority tier and the cache-read price when the request has them.",
            "usage": "Principal claim keep_k: how many candidates to keep (default 1; an invalid value counts as 1; clamped to the candidate count)."
        }
    }
});
CCLB_HOOK_SCHEMA_1_0(filter);

/* The request-wide suffix: "; tier=priority cache_read=N" (parts that apply), or "". */
#define CONTEXT_MAX 64u
static cclb_u32 request_context(const cclb_filter_request_1_0 *req, char *t) {
    cclb_u32 len = 0;
    int priority = req->service_tier.is_some &&
                   cclb_mem_eq(req->service_tier.value.ptr, req->service_tier.value.len, "priority", 8);
    cclb_opt_u64 cache_read = req->cache_pricing.cache_read_micros_per_million;
    if (!priority && !cache_read.is_some) return 0;
    len = cclb_put_text(t, len, ";");
    if (priority) len = cclb_put_text(t, len, " tier=priority");
    if (cache_read.is_some) {
        len = cclb_put_text(t, len, " cache_read=");
        len += cclb_fmt_u64(t + len, cache_read.value);
    }
    return len;
}

/* "outside top-4294967295 (4294967295 predicted cache read tokens)" is 63 bytes;
 * the context adds at most 47. */
#define REASON_MAX 128u

CCLB_EXPORT("cc_lb_filter") cclb_u64 cc_lb_filter(cclb_u32 in_ptr, cclb_u32 in_len) {
    cclb_filter_request_1_0 req;
    cclb_read_filter_request_1_0(in_ptr, in_len, &req);

    cclb_u32 n = req.candidates.len;
    cclb_u32 k = cclb_keep_k(req.principal, n);
    if ((cclb_u64)n * REASON_MAX > 0x7fffffffu) CCLB_TRAP();

    char context[CONTEXT_MAX];
    cclb_u32 context_len = request_context(&req, context);

    cclb_u64 out = cclb_rank_filter_response(req.candidates, k, REASON_MAX, context, context_len,
                                             cclb_rank_tokens_1_0, cclb_rank_id_1_0);

    cclb_free_input(in_ptr);
    return out;
}

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

/* Parses the claim value as a JSON integer. Returns 1 and sets *neg / *mag
 * (saturated) on success. */
static int parse_json_int(cclb_bytes v, int *neg, cclb_u64 *mag) {
    cclb_u32 i = 0, n = v.len;
    const cclb_u8 *s = v.ptr;
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    *neg = 0;
    if (i < n && s[i] == '-') {
        *neg = 1;
        i++;
    }
    if (i >= n || s[i] < '0' || s[i] > '9') return 0;
    if (s[i] == '0' && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '9') return 0; /* leading zero */
    cclb_u64 m = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        if (m < 0x0fffffffffffffffull) m = m * 10 + (cclb_u64)(s[i] - '0');
        i++;
    }
    if (i < n && s[i] == '.') { /* accept only a zero fraction: 2.0, 2.00 */
        i++;
        if (i >= n || s[i] < '0' || s[i] > '9') return 0;
        while (i < n && s[i] == '0') i++;
        if (i < n && s[i] >= '1' && s[i] <= '9') return 0;
    }
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    if (i != n) return 0; /* exponents, strings, objects, trailing junk */
    *mag = m;
    return 1;
}

static cclb_u32 keep_k(cclb_principal p, cclb_u32 n) {
    cclb_claim c;
    cclb_u64 k = 1;
    if (cclb_find_claim(p.claims, "keep_k", &c)) {
        int neg;
        cclb_u64 mag;
        if (parse_json_int(c.value, &neg, &mag)) k = neg ? 0 : mag;
    }
    return k > n ? n : (cclb_u32)k;
}

/* Stable merge sort of indices by tokens, descending. */
static void sort_indices(cclb_u32 *idx, cclb_u32 *tmp, const cclb_u32 *tokens, cclb_u32 n) {
    for (cclb_u32 width = 1; width < n; width *= 2) {
        for (cclb_u32 lo = 0; lo < n; lo += 2 * width) {
            cclb_u32 mid = lo + width < n ? lo + width : n;
            cclb_u32 hi = lo + 2 * width < n ? lo + 2 * width : n;
            cclb_u32 a = lo, b = mid, o = lo;
            while (a < mid && b < hi) tmp[o++] = tokens[idx[b]] > tokens[idx[a]] ? idx[b++] : idx[a++];
            while (a < mid) tmp[o++] = idx[a++];
            while (b < hi) tmp[o++] = idx[b++];
        }
        for (cclb_u32 i = 0; i < n; i++) idx[i] = tmp[i];
    }
}

#define REASON_MAX 80u

CCLB_EXPORT("cc_lb_filter") cclb_u64 cc_lb_filter(cclb_u32 in_ptr, cclb_u32 in_len) {
    cclb_filter_request req;
    cclb_read_filter_request(in_ptr, in_len, &req);

    cclb_u32 n = req.candidates.len;
    cclb_u32 k = keep_k(req.principal, n);

    /* scratch: tokens, idx, tmp, keep flags, results, reason texts */
    cclb_u32 *tokens = (cclb_u32 *)cclb_xalloc(n * 4u);
    cclb_u32 *idx = (cclb_u32 *)cclb_xalloc(n * 4u);
    cclb_u32 *tmp = (cclb_u32 *)cclb_xalloc(n * 4u);
    cclb_u8 *keep = (cclb_u8 *)cclb_xalloc(n);
    cclb_pcr *results = (cclb_pcr *)cclb_xalloc(n * (cclb_u32)sizeof(cclb_pcr));
    char *texts = (char *)cclb_xalloc(n * REASON_MAX);

    for (cclb_u32 i = 0; i < n; i++) {
        tokens[i] = cclb_candidate_at(req.candidates, i).predicted_cache_read_tokens;
        idx[i] = i;
        keep[i] = 0;
    }
    sort_indices(idx, tmp, tokens, n);
    for (cclb_u32 r = 0; r < k; r++) keep[idx[r]] = 1;

    for (cclb_u32 i = 0; i < n; i++) {
        char *t = texts + i * REASON_MAX;
        cclb_u32 len = 0;
        const char *part;
        if (keep[i]) {
            part = "top-";
            while (*part) t[len++] = *part++;
            len += cclb_fmt_u64(t + len, k);
            part = " by predicted cache read tokens (";
            while (*part) t[len++] = *part++;
            len += cclb_fmt_u64(t + len, tokens[i]);
            t[len++] = ')';
        } else {
            part = "outside top-";
            while (*part) t[len++] = *part++;
            len += cclb_fmt_u64(t + len, k);
            part = " (";
            while (*part) t[len++] = *part++;
            len += cclb_fmt_u64(t + len, tokens[i]);
            part = " predicted cache read tokens)";
            while (*part) t[len++] = *part++;
        }
        results[i].upstream_id = cclb_candidate_at(req.candidates, i).upstream_id;
        results[i].decision = cclb_str_from(keep[i] ? "accept" : "reject");
        results[i].reason = cclb_str_make(t, len);
    }

    cclb_u64 out = cclb_write_filter_response(results, n);

    cclb_xfree(texts);
    cclb_xfree(results);
    cclb_xfree(keep);
    cclb_xfree(tmp);
    cclb_xfree(idx);
    cclb_xfree(tokens);
    cclb_free_input(in_ptr);
    return out;
}

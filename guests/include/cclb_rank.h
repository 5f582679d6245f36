/*
 * cclb_rank.h: the cache-aware ranking shared by plugins/cache_aware_filter.c
 * (0.2 contract) and plugins/cache_aware_filter_1_0.c (1.0 contract).
 *
 * K comes from the principal's claim `keep_k` (the claim value is JSON, e.g. `2`).
 * Missing claim: K = 1. A value that is not a JSON integer (a number with a
 * fraction of zeros only, like `2.0`, counts as that integer): K = 1. K is then
 * clamped to [0, number of candidates]. Ranking: more predicted_cache_read_tokens
 * first; equal counts keep their input order. One result per candidate, in input
 * order: decision `accept` with reason `top-K by predicted cache read tokens (N)`,
 * or decision `reject` with reason `outside top-K (N predicted cache read tokens)`;
 * either reason is followed by the caller's request-wide context text (may be empty).
 *
 * Include it after cclb_guest.h, or after cclb_guest_1_0.h for the 1.0 candidate
 * accessors (cclb_rank_tokens_1_0 / cclb_rank_id_1_0), in the plugin's one
 * translation unit.
 */
#ifndef CCLB_RANK_H
#define CCLB_RANK_H

#include "cclb_guest.h"

/* Parses the claim value as a JSON integer. Returns 1 and sets *neg / *mag
 * (saturated) on success. */
static CCLB_UNUSED int cclb_parse_json_int(cclb_bytes v, int *neg, cclb_u64 *mag) {
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

/* K from the principal's claim `keep_k`: 1 when missing or invalid, clamped to [0, n]. */
static CCLB_UNUSED cclb_u32 cclb_keep_k(cclb_principal p, cclb_u32 n) {
    cclb_claim c;
    cclb_u64 k = 1;
    if (cclb_find_claim(p.claims, "keep_k", &c)) {
        int neg;
        cclb_u64 mag;
        if (cclb_parse_json_int(c.value, &neg, &mag)) k = neg ? 0 : mag;
    }
    return k > n ? n : (cclb_u32)k;
}

/* Stable merge sort of indices by tokens, descending. */
static CCLB_UNUSED void cclb_sort_indices(cclb_u32 *idx, cclb_u32 *tmp, const cclb_u32 *tokens, cclb_u32 n) {
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

/* Appends the NUL-terminated `part` at t + len; returns the new length. */
static CCLB_UNUSED cclb_u32 cclb_put_text(char *t, cclb_u32 len, const char *part) {
    while (*part) t[len++] = *part++;
    return len;
}

/* Read candidate i of the request's candidates: its predicted_cache_read_tokens and
 * its upstream_id. One pair per contract (the candidate layouts differ). */
typedef cclb_u32 (*cclb_rank_tokens_at)(cclb_array candidates, cclb_u32 i);
typedef cclb_str (*cclb_rank_id_at)(cclb_array candidates, cclb_u32 i);

/* 0.2: UpstreamCandidate (40 bytes), cclb_candidate_at. */
static CCLB_UNUSED cclb_u32 cclb_rank_tokens(cclb_array candidates, cclb_u32 i) {
    return cclb_candidate_at(candidates, i).predicted_cache_read_tokens;
}
static CCLB_UNUSED cclb_str cclb_rank_id(cclb_array candidates, cclb_u32 i) {
    return cclb_candidate_at(candidates, i).upstream_id;
}

#ifdef CCLB_GUEST_1_0_H
/* 1.0: UpstreamCandidate (80 bytes), cclb_candidate_1_0_at. */
static CCLB_UNUSED cclb_u32 cclb_rank_tokens_1_0(cclb_array candidates, cclb_u32 i) {
    return cclb_candidate_1_0_at(candidates, i).predicted_cache_read_tokens;
}
static CCLB_UNUSED cclb_str cclb_rank_id_1_0(cclb_array candidates, cclb_u32 i) {
    return cclb_candidate_1_0_at(candidates, i).upstream_id;
}
#endif

/* Ranks `candidates` (keeping the top k) and writes the FilterResponse; returns the
 * hook's packed value. Each reason gets `reason_max` bytes, which must hold the
 * longest reason ("outside top-4294967295 (4294967295 predicted cache read tokens)",
 * 63 bytes) plus `context_len`. n * reason_max must not wrap around 32 bits (a block
 * over 2 GiB makes cclb_xalloc trap). */
static CCLB_UNUSED cclb_u64 cclb_rank_filter_response(cclb_array candidates, cclb_u32 k, cclb_u32 reason_max,
                                                      const char *context, cclb_u32 context_len,
                                                      cclb_rank_tokens_at tokens_at, cclb_rank_id_at id_at) {
    cclb_u32 n = candidates.len;

    /* scratch: tokens, idx, tmp, keep flags, results, reason texts */
    cclb_u32 *tokens = (cclb_u32 *)cclb_xalloc(n * 4u);
    cclb_u32 *idx = (cclb_u32 *)cclb_xalloc(n * 4u);
    cclb_u32 *tmp = (cclb_u32 *)cclb_xalloc(n * 4u);
    cclb_u8 *keep = (cclb_u8 *)cclb_xalloc(n);
    cclb_pcr *results = (cclb_pcr *)cclb_xalloc(n * (cclb_u32)sizeof(cclb_pcr));
    char *texts = (char *)cclb_xalloc(n * reason_max);

    for (cclb_u32 i = 0; i < n; i++) {
        tokens[i] = tokens_at(candidates, i);
        idx[i] = i;
        keep[i] = 0;
    }
    cclb_sort_indices(idx, tmp, tokens, n);
    for (cclb_u32 r = 0; r < k; r++) keep[idx[r]] = 1;

    for (cclb_u32 i = 0; i < n; i++) {
        char *t = texts + i * reason_max;
        cclb_u32 len = 0;
        if (keep[i]) {
            len = cclb_put_text(t, len, "top-");
            len += cclb_fmt_u64(t + len, k);
            len = cclb_put_text(t, len, " by predicted cache read tokens (");
            len += cclb_fmt_u64(t + len, tokens[i]);
            t[len++] = ')';
        } else {
            len = cclb_put_text(t, len, "outside top-");
            len += cclb_fmt_u64(t + len, k);
            len = cclb_put_text(t, len, " (");
            len += cclb_fmt_u64(t + len, tokens[i]);
            len = cclb_put_text(t, len, " predicted cache read tokens)");
        }
        cclb_memcpy(t + len, context, context_len);
        len += context_len;
        results[i].upstream_id = id_at(candidates, i);
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
    return out;
}

#endif /* CCLB_RANK_H */

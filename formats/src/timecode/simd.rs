//! The v2 time decoder's four rANS lanes stepped together in one SSE register (x86_64 with AVX2).
//!
//! With only four lanes, a vector step is bound by the latency of its dependency chain, not by
//! its instruction count, so the chain is kept short. Each lane's eight context table entries (one
//! per bucket of the previous delta) do not depend on the chain and are loaded ahead; the chain
//! picks one with a permute instead of waiting for a gather. Tables in a vector layout, built per
//! chunk from the scalar ones, let a slot's entry serve as the next step's permute index as it is,
//! and make a slot index three operations from its context entry. The slot loads are four scalar
//! loads, whose latency is shorter than a gather's. The scalar decoder in the parent module is the
//! reference, and finishes every chunk (the other lanes' tails past the last lane's length, and
//! everything without AVX2).

use std::arch::x86_64::*;

use super::{
    large_delta, BitReader, TimeDecoder, BUCKETS, BUCKET_OF_SYMBOL, DIRECT, LANES, MAX_PRECISION,
};

/// The lane state the scalar decoder and the vector decoder hand over to each other.
pub(super) struct LaneState<'b> {
    pub(super) x: [u32; LANES],
    /// Byte position of the next word in each lane's rANS section.
    pub(super) pos: [usize; LANES],
    pub(super) prev_bucket: [usize; LANES],
    pub(super) raw: [BitReader<'b>; LANES],
    pub(super) large_sum: u128,
}

/// Decodes up to `steps` steps of all four lanes from the start of the chunk, when the CPU has
/// AVX2 and the input allows it. Returns the number of steps decoded (0 when the vector path is
/// not taken); the scalar decoder continues from there with `state`.
pub(super) fn decode_steps(
    td: &TimeDecoder<'_>,
    bases: &[u16],
    bounds: &[usize; super::LANES + 1],
    steps: usize,
    deltas: &mut [u64],
    state: &mut LaneState<'_>,
) -> Result<usize, String> {
    // Short chunks are not worth building the vector tables.
    if steps < MIN_STEPS || !is_x86_feature_detected!("avx2") {
        return Ok(0);
    }
    // The word gather's indices are signed 32-bit byte offsets.
    if td.code.len() > i32::MAX as usize {
        return Ok(0);
    }
    let Some(rans_at) = rans_offsets(td) else {
        return Ok(0);
    };
    let Some(vlut) = vector_lut(&td.lut, td.slots.len()) else {
        return Ok(0);
    };
    // Every base must start a whole row of the lookup table, as `ContextRows::base` makes them:
    // the vector path loads each event's row without a check. Otherwise the scalar decoder, which
    // checks each lookup, does it all.
    let max_base = bases.iter().copied().max().unwrap_or(0) as usize;
    if max_base + BUCKETS > vlut.len() {
        return Ok(0);
    }
    let vslots = vector_slots(&td.slots);
    // SAFETY: AVX2 is available (checked above); every base indexes a whole row of `vlut`
    // (checked above); `vector_lut` checked that every entry's slots lie in `slots`, and `vslots`
    // is as long; `code` is indexable with 32-bit offsets (checked above); `rans_at` are the
    // lanes' sections' offsets in `code` (`rans_offsets` checked they lie inside it); `bounds`
    // and `steps` come from `lane_bounds` for `bases.len() == deltas.len()` events with `steps`
    // the last lane's length.
    unsafe {
        steps_avx2(
            td, &vlut, &vslots, bases, bounds, steps, deltas, state, &rans_at,
        )
    }?;
    Ok(steps)
}

/// Steps below which the scalar decoder does a chunk alone.
const MIN_STEPS: usize = 64;

/// Each lane's rANS section's byte offset in the chunk's time code stream, which holds them all.
fn rans_offsets(td: &TimeDecoder<'_>) -> Option<[usize; LANES]> {
    let code = td.code.as_ptr() as usize;
    let mut at = [0; LANES];
    for (a, lane) in at.iter_mut().zip(&td.lanes) {
        *a = (lane.rans.as_ptr() as usize).checked_sub(code)?;
        // `parse` cut the sections from `code`; checked anyway, the word loads rely on it.
        if *a + lane.rans.len() > td.code.len() || lane.rans.len() < 4 {
            return None;
        }
    }
    Some(at)
}

/// Slots beyond this many do not fit the vector lookup table's 17-bit offsets (chunks of more
/// than 64 Ki events with large tables); the scalar decoder does those.
const MAX_VECTOR_SLOTS: usize = 1 << 17;
/// The vector slot's symbol field (7 bits) when the symbol is 127 or more: the step looks the
/// symbol up in the scalar slots.
const SYM_ESCAPE: u32 = 127;

/// The context lookup table in the vector layout: `offset << 15 | precision << 11 | mask`, so a
/// slot is `offset + (x & mask)` in three dependent operations. `None` if some entry does not fit
/// or does not lie inside `slots` (which `parse` never makes).
fn vector_lut(lut: &[u32], slots: usize) -> Option<Vec<u32>> {
    if slots > MAX_VECTOR_SLOTS {
        return None;
    }
    let mut ok = true;
    let v = lut
        .iter()
        .map(|&e| {
            let (offset, precision) = (e >> 4, e & 15);
            // Checked here, so that the decoder's slot loads are in range by construction.
            ok &= precision <= MAX_PRECISION && offset as usize + (1 << precision) <= slots;
            offset << 15 | precision << 11 | ((1 << precision) - 1)
        })
        .collect();
    ok.then_some(v)
}

/// The decoding slots in the vector layout: the symbol's bucket (bits 0..3, so that a slot is the
/// next step's row index as it is: the permute reads only those bits), the symbol or
/// [`SYM_ESCAPE`] (3..10), bias (10..21), frequency − 1 (21..32). From the scalar layout `sym |
/// freq << 9 | bias << 21`, frequencies 1 to 2^11.
fn vector_slots(slots: &[u32]) -> Vec<u32> {
    slots
        .iter()
        .map(|&s| {
            let (sym, freq, bias) = (s & 0x1ff, (s >> 9) & 0xfff, s >> 21);
            (BUCKET_OF_SYMBOL[sym as usize] as u32)
                | sym.min(SYM_ESCAPE) << 3
                | (bias & 0x7ff) << 10
                | (freq.wrapping_sub(1) & 0x7ff) << 21
        })
        .collect()
}

/// The vector decoder. See [`decode_steps`] for what the caller checks.
///
/// # Safety
///
/// The CPU has AVX2; every `bases[i] + BUCKETS <= vlut.len()`; every `vlut` entry's slots
/// (`offset .. offset + mask + 1`) lie in `vslots`, which is as long as `td.slots`; `td.code.len()`
/// fits in an `i32`; `rans_at[k]` is the offset of lane `k`'s rANS section in `td.code` and the
/// section lies inside it with at least 4 bytes; `bounds` is `lane_bounds(n)` for `n ==
/// bases.len() == deltas.len()`; `steps` is at most the last lane's length.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn steps_avx2(
    td: &TimeDecoder<'_>,
    vlut: &[u32],
    vslots: &[u32],
    bases: &[u16],
    bounds: &[usize; LANES + 1],
    steps: usize,
    deltas: &mut [u64],
    state: &mut LaneState<'_>,
    rans_at: &[usize; LANES],
) -> Result<(), String> {
    let lut = vlut.as_ptr();
    let slots = vslots.as_ptr() as *const i32;
    let code = td.code.as_ptr() as *const i32;
    let lane = |k: usize| bounds[k]..bounds[k] + steps;
    let b = [
        &bases[lane(0)],
        &bases[lane(1)],
        &bases[lane(2)],
        &bases[lane(3)],
    ];
    // Each lane's word position is kept as the byte offset in `code` of the word before the next
    // one: a 4-byte load there has the next word in its upper half, and stays inside the section
    // when clamped to the section's last 4 bytes. A clamped load (the lane has run out of words)
    // reads a wrong word, but its position then moves past the section's end, which the scalar
    // decoder's final check reports: such a chunk is an error either way.
    let epi =
        |v: [usize; LANES]| _mm_setr_epi32(v[0] as i32, v[1] as i32, v[2] as i32, v[3] as i32);
    let mut word_at = epi(std::array::from_fn(|k| rans_at[k] + state.pos[k] - 2));
    let last_word_at = epi(std::array::from_fn(|k| {
        rans_at[k] + td.lanes[k].rans.len() - 4
    }));
    let mut x = epi(state.x.map(|v| v as usize));
    // The previous step's slots; only their bucket bits matter to the next step.
    let mut s = epi(state.prev_bucket);
    let mask_bits = _mm_set1_epi32(0x7ff);
    let low4 = _mm_set1_epi32(15);
    let sym_bits = _mm_set1_epi32(0x7f);
    let escape = _mm_set1_epi32(SYM_ESCAPE as i32);
    let zero = _mm_setzero_si128();
    let mut sym_out = [0u32; LANES];
    for j in 0..steps {
        // The four context rows, off the dependency chain.
        // SAFETY: the caller checked `bases[i] + BUCKETS <= vlut.len()` for every event, and a
        // row is BUCKETS (8) `u32` entries, one unaligned 32-byte load.
        let rows = unsafe {
            [
                _mm256_loadu_si256(lut.add(b[0][j] as usize) as *const __m256i),
                _mm256_loadu_si256(lut.add(b[1][j] as usize) as *const __m256i),
                _mm256_loadu_si256(lut.add(b[2][j] as usize) as *const __m256i),
                _mm256_loadu_si256(lut.add(b[3][j] as usize) as *const __m256i),
            ]
        };
        // Entry of lane k: row k's element `bucket[k]`. The permute reads only the low 3 bits of
        // each index, the previous slot's bucket, and the blend keeps element k of the k-th
        // permute.
        let idx = _mm256_zextsi128_si256(s);
        // A macro, not a closure: closures do not inherit `target_feature` on every supported
        // compiler, and an intrinsic that is not inlined costs a call.
        macro_rules! pick {
            ($k:literal) => {
                _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(rows[$k], idx))
            };
        }
        let entry = _mm_blend_epi32::<0b1100>(
            _mm_blend_epi32::<0b0010>(pick!(0), pick!(1)),
            _mm_blend_epi32::<0b1000>(pick!(2), pick!(3)),
        );
        let slot = _mm_add_epi32(
            _mm_srli_epi32::<15>(entry),
            _mm_and_si128(x, _mm_and_si128(entry, mask_bits)),
        );
        let high = _mm_srlv_epi32(x, _mm_and_si128(_mm_srli_epi32::<11>(entry), low4));
        // Four scalar loads, not a gather: they are on the dependency chain, and a gather's
        // latency is about half again that of extracting, loading and inserting.
        // SAFETY: each index is `offset + (x & mask)` of a `vlut` entry, below `offset + mask + 1`,
        // which the caller checked lies in `vslots`.
        s = unsafe {
            _mm_setr_epi32(
                *slots.add(_mm_extract_epi32::<0>(slot) as u32 as usize),
                *slots.add(_mm_extract_epi32::<1>(slot) as u32 as usize),
                *slots.add(_mm_extract_epi32::<2>(slot) as u32 as usize),
                *slots.add(_mm_extract_epi32::<3>(slot) as u32 as usize),
            )
        };
        // x' = freq × high + bias = (freq − 1) × high + (high + bias).
        let high_bias = _mm_add_epi32(high, _mm_and_si128(_mm_srli_epi32::<10>(s), mask_bits));
        let nx = _mm_add_epi32(_mm_mullo_epi32(_mm_srli_epi32::<21>(s), high), high_bias);
        // Refill the lanes whose state fell below 2^16 with their next word.
        let refill = _mm_cmpeq_epi32(_mm_srli_epi32::<16>(nx), zero);
        let at = _mm_min_epu32(word_at, last_word_at);
        // SAFETY: each offset is at most `rans_at[k] + len_k - 4` (clamped just above) and at
        // least `rans_at[k]` (it starts at `rans_at[k] + pos - 2` with `pos >= 4` and only
        // grows), so each 4-byte load lies in lane k's section, inside `code`; `code` is
        // indexable with i32 offsets (checked by the caller).
        let words = unsafe { _mm_i32gather_epi32::<1>(code, at) };
        let refilled = _mm_or_si128(_mm_slli_epi32::<16>(nx), _mm_srli_epi32::<16>(words));
        x = _mm_blendv_epi8(nx, refilled, refill);
        // `refill` is -1 where a lane refilled: 2 bytes on.
        word_at = _mm_sub_epi32(word_at, _mm_add_epi32(refill, refill));
        let sym = _mm_and_si128(_mm_srli_epi32::<3>(s), sym_bits);
        // SAFETY: a store of 16 bytes into a `[u32; 4]`.
        unsafe { _mm_storeu_si128(sym_out.as_mut_ptr() as *mut __m128i, sym) };
        let escaped = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(sym, escape)));
        for k in 0..LANES {
            deltas[bounds[k] + j] = sym_out[k] as u64;
        }
        if escaped != 0 {
            let mut at = [0u32; LANES];
            // SAFETY: a store of 16 bytes into a `[u32; 4]`.
            unsafe { _mm_storeu_si128(at.as_mut_ptr() as *mut __m128i, slot) };
            escaped_deltas(td, escaped, &at, bounds, j, deltas, state)?;
        }
    }
    let mut v = [0u32; LANES];
    // SAFETY: stores of 16 bytes into a `[u32; 4]`.
    unsafe { _mm_storeu_si128(v.as_mut_ptr() as *mut __m128i, x) };
    state.x = v;
    // SAFETY: as above.
    unsafe { _mm_storeu_si128(v.as_mut_ptr() as *mut __m128i, word_at) };
    state.pos = std::array::from_fn(|k| v[k] as usize + 2 - rans_at[k]);
    // SAFETY: as above.
    unsafe { _mm_storeu_si128(v.as_mut_ptr() as *mut __m128i, s) };
    state.prev_bucket = v.map(|s| (s & 7) as usize);
    Ok(())
}

/// The deltas of the lanes (bits of `escaped`) whose symbol at step `j` is 127 or more, from the
/// scalar slot `slot[k]`, in lane order like the scalar decoder: a large symbol's extra bits come
/// from its lane's reader.
#[cold]
#[inline(never)]
fn escaped_deltas(
    td: &TimeDecoder<'_>,
    escaped: i32,
    slot: &[u32; LANES],
    bounds: &[usize; LANES + 1],
    j: usize,
    deltas: &mut [u64],
    state: &mut LaneState<'_>,
) -> Result<(), String> {
    for k in 0..LANES {
        if escaped >> k & 1 != 0 {
            let sym = (td.slots[slot[k] as usize] & 0x1ff) as u64;
            let d = if sym < DIRECT {
                sym
            } else {
                let d = large_delta(sym, &mut state.raw[k])?;
                state.large_sum += d as u128;
                d
            };
            deltas[bounds[k] + j] = d;
        }
    }
    Ok(())
}

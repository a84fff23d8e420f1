#!/usr/bin/env python3
"""An independent reader of event timestamps and access keys, written from docs/FORMAT.md alone
(sections 1, 3.1 to 3.4 and 4.2), not from hwrr's code: it proves the spec of the v1, v2 and v3
time streams and key dictionaries is complete.

Usage: spec_time_reader.py TRACE  -> prints every event's t_ns, one per line, in file order, then
`keys` and every chunk's key definitions as `chunk tag region offset width`, one per line.
Needs the `zstd` command (for the zstd frames); nothing else beyond the standard library.
"""

import struct
import subprocess
import sys


def unzstd(frame, size):
    out = subprocess.run(["zstd", "-dc"], input=frame, capture_output=True, check=True).stdout
    assert len(out) == size, "frame decompresses to the wrong length"
    return out


class Reader:
    def __init__(self, data):
        self.b = data
        self.p = 0

    def varint(self):
        v, shift = 0, 0
        while True:
            byte = self.b[self.p]
            self.p += 1
            v |= (byte & 0x7F) << shift
            if byte < 0x80:
                return v
            shift += 7

    def u8(self):
        self.p += 1
        return self.b[self.p - 1]

    def take(self, n):
        self.p += n
        assert self.p <= len(self.b), "stream ends early"
        return self.b[self.p - n : self.p]

    def at_end(self):
        return self.p == len(self.b)


def split(payload, count):
    lengths = struct.unpack_from("<%dI" % count, payload, 0)
    out, pos = [], 4 * count
    for n in lengths:
        out.append(payload[pos : pos + n])
        pos += n
    assert pos == len(payload), "stream lengths do not add up"
    return out


def weight(code):
    return code + 1 if code < 16 else (17 + (code & 15)) << ((code >> 4) - 1)


def frequencies(weights, p):
    m, k, total = 1 << p, len(weights), sum(weights)
    f = [1 + w * (m - k) // total for w in weights]
    f[weights.index(max(weights))] += m - sum(f)
    return f


def delta_of(sym, bits):
    if sym < 128:
        return sym
    e = 7 + (sym - 128) // 4
    return ((4 + (sym - 128) % 4) << (e - 2)) | bits(e - 2)


def bucket(d):
    return min(d.bit_length(), 7)


def bucket_v3(d):
    if d < 4:
        return d
    e = d.bit_length() - 1
    return min(2 * e + ((d >> (e - 1)) & 1), 15)


def unzigzag(z):
    return (z >> 1) ^ -(z & 1)


def header_of(rd):
    kind = rd.u8()
    coord = 0 if kind == 0 else rd.u8() if kind == 1 else rd.varint()
    p = rd.u8()
    return kind, coord, p, rd.varint()


def v2_times(streams, count, first_t, encoding):
    tags, symbols, model, code = streams[0], streams[2], streams[8], streams[9]
    rd = Reader(model)
    q = rd.varint()
    m = rd.varint()
    class_map = list(rd.take(m))
    tables = {}  # (kind, coordinate) -> (precision, symbols, freqs)
    if encoding == 2:
        for _ in range(rd.varint()):
            kind, coord, p, k = header_of(rd)
            syms, weights, sym = [], [], -1
            for _ in range(k):
                sym += 1 + rd.varint()
                syms.append(sym)
                weights.append(weight(rd.u8()))
            tables[(kind, coord)] = (p, syms, frequencies(weights, p))
    else:
        headers = [header_of(rd) for _ in range(rd.varint())]
        all_syms = []
        for _kind, _coord, _p, k in headers:
            syms, sym = [], -1
            for _ in range(k):
                sym += 1 + rd.varint()
                assert sym < 356
                syms.append(sym)
            all_syms.append(syms)
        for (kind, coord, p, k), syms in zip(headers, all_syms):
            weights, weight_code = [], 0
            for _ in range(k):
                weight_code += unzigzag(rd.varint())
                assert 0 <= weight_code <= 255
                weights.append(weight(weight_code))
            tables[(kind, coord)] = (p, syms, frequencies(weights, p))
    assert rd.at_end()
    buckets, bucket_of = (8, bucket) if encoding == 2 else (16, bucket_v3)

    sr = Reader(symbols)
    classes = []
    for t in tags:
        if t < 6:
            s = sr.varint()
            classes.append(class_map[s] if s < m else 54)
        else:
            classes.append(50 + t)

    per = -(-count // 4)
    lanes = [(min(k * per, count), min((k + 1) * per, count)) for k in range(4)]
    cr = Reader(code)
    deltas = [None] * count
    for start, end in lanes:
        rans = Reader(cr.take(cr.varint()))
        extra = cr.take(cr.varint())
        bitpos = [0]

        def bits(n):
            v = 0
            for i in range(n):
                b = bitpos[0] + i
                v |= ((extra[b // 8] >> (b % 8)) & 1) << i
            bitpos[0] += n
            return v

        x = struct.unpack("<I", rans.take(4))[0]
        assert x >= 1 << 16
        for i in range(start, end):
            c = classes[i]
            prev = classes[i - 1] if i > 0 else 55
            b = bucket_of(deltas[i - 1]) if i > start else 0
            ctx = (prev * 64 + c) * buckets + b
            table = tables.get((2, ctx)) or tables.get((1, c)) or tables[(0, 0)]
            p, syms, freqs = table
            slot, cum = x % (1 << p), 0
            for j, f in enumerate(freqs):
                if cum <= slot < cum + f:
                    break
                cum += f
            x = f * (x >> p) + slot - cum
            if x < 1 << 16:
                x = (x << 16) | struct.unpack("<H", rans.take(2))[0]
            deltas[i] = delta_of(syms[j], bits)
        assert x == 1 << 16 and rans.at_end(), "lane does not end in the initial state"
        assert (bitpos[0] + 7) // 8 == len(extra), "unused extra bits"
    assert cr.at_end()
    assert count == 0 or deltas[0] == 0
    out, t = [], first_t
    for d in deltas:
        t += q * d
        out.append(t)
    return out


def v1_times(streams, count, first_t):
    rd = Reader(streams[1])
    q = rd.varint()
    out, t = [], first_t
    for _ in range(count):
        t += q * rd.varint()
        out.append(t)
    return out


def key_definitions(streams, encoding):
    """Section 4.2: one definition per access event whose symbol is the dictionary's size."""
    tags, keys, symbols = streams[0], streams[2 if encoding == 1 else 1], streams[3 if encoding == 1 else 2]
    kr, sr, size, previous, out = Reader(keys), Reader(symbols), 0, 0, []
    for t in tags:
        if t >= 6:
            continue
        if sr.varint() == size:
            region, offset, width = kr.varint(), kr.varint(), kr.u8()
            if encoding == 3:
                offset = (previous + unzigzag(offset)) % (1 << 64)
                previous = offset
            assert width in (0, 1, 2, 4, 8)
            out.append((t, region, offset, width))
            size += 1
    assert kr.at_end() and sr.at_end(), "keys or symbols left over"
    return out


def main(path):
    data = open(path, "rb").read()
    assert data[:8] == b"HWRRTRCE"
    version, = struct.unpack_from("<H", data, 8)
    assert version in (1, 2, 3)
    keys = []
    json_zlen, = struct.unpack_from("<I", data, 12)
    pos = 64 + json_zlen
    while pos + 112 <= len(data) and data[pos : pos + 4] == b"HWCK":
        ctype, encoding = data[pos + 4], data[pos + 5]
        zlen, plen, _first, count = struct.unpack_from("<IIQI", data, pos + 8)
        first_t, last_t = struct.unpack_from("<QQ", data, pos + 32)
        stored = data[pos + 112 : pos + 112 + zlen]
        pos += 112 + zlen
        if ctype != 1:
            continue
        if encoding == 1:
            streams = split(unzstd(stored, plen), 9)
            times = v1_times(streams, count, first_t)
        else:
            assert encoding == version, "encoding 2 in version 2 files, 3 in version 3 files"
            frame_len, = struct.unpack_from("<I", stored, 0)
            suffix = stored[4 + frame_len :]
            payload = unzstd(stored[4 : 4 + frame_len], plen - len(suffix)) + suffix
            streams = split(payload, 10)
            times = v2_times(streams, count, first_t, encoding)
        assert times[-1] == last_t, "last time differs from the chunk header"
        for t in times:
            print(t)
        keys.append(key_definitions(streams, encoding))
    print("keys")
    for chunk, definitions in enumerate(keys):
        for tag, region, offset, width in definitions:
            print(chunk, tag, region, offset, width)


if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env python3
"""An independent reader of event timestamps, written from docs/FORMAT.md alone (sections 1, 3.1,
3.2 and 3.3), not from hwrr's code: it proves the spec of the v1 and v2 time streams is complete.

Usage: spec_time_reader.py TRACE  -> prints every event's t_ns, one per line, in file order.
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


def v2_times(streams, count, first_t):
    tags, symbols, model, code = streams[0], streams[2], streams[8], streams[9]
    rd = Reader(model)
    q = rd.varint()
    m = rd.varint()
    class_map = list(rd.take(m))
    tables = {}  # (kind, coordinate) -> (precision, symbols, freqs)
    for _ in range(rd.varint()):
        kind = rd.u8()
        coord = 0 if kind == 0 else rd.u8() if kind == 1 else rd.varint()
        p = rd.u8()
        syms, weights, sym = [], [], -1
        for _ in range(rd.varint()):
            sym += 1 + rd.varint()
            syms.append(sym)
            weights.append(weight(rd.u8()))
        tables[(kind, coord)] = (p, syms, frequencies(weights, p))
    assert rd.at_end()

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
            b = bucket(deltas[i - 1]) if i > start else 0
            ctx = (prev * 64 + c) * 8 + b
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


def main(path):
    data = open(path, "rb").read()
    assert data[:8] == b"HWRRTRCE"
    version, = struct.unpack_from("<H", data, 8)
    assert version in (1, 2)
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
            times = v1_times(split(unzstd(stored, plen), 9), count, first_t)
        else:
            assert encoding == 2 and version == 2
            frame_len, = struct.unpack_from("<I", stored, 0)
            suffix = stored[4 + frame_len :]
            payload = unzstd(stored[4 : 4 + frame_len], plen - len(suffix)) + suffix
            times = v2_times(split(payload, 10), count, first_t)
        assert times[-1] == last_t, "last time differs from the chunk header"
        for t in times:
            print(t)


if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env python3
"""Lists the DHCP requests in a capture.pcap (from capture.sh) and writes chosen ones as fixtures.
Usage: extract.py capture.pcap            # list: index, ports, xid, mac, type, vendor class
       extract.py capture.pcap N name.bin # write the UDP payload of packet N
"""
import struct, sys

def packets(path):
    data = open(path, 'rb').read()
    at = 24
    while at + 16 <= len(data):
        _, _, incl, _ = struct.unpack('<IIII', data[at:at + 16])
        frame = data[at + 16:at + 16 + incl]
        at += 16 + incl
        if len(frame) < 14 or frame[12:14] != b'\x08\x00':
            continue
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        if ip[9] != 17:
            continue
        udp = ip[ihl:]
        sport, dport = struct.unpack('>HH', udp[:4])
        yield '.'.join(map(str, ip[12:16])), sport, '.'.join(map(str, ip[16:20])), dport, udp[8:]

def describe(p):
    opts, at = {}, 240
    while at < len(p) and p[at] != 255:
        if p[at] == 0:
            at += 1; continue
        opts.setdefault(p[at], p[at + 2:at + 2 + p[at + 1]]); at += 2 + p[at + 1]
    return 'op=%d xid=%08x mac=%s type=%s vc=%s' % (p[0], struct.unpack('>I', p[4:8])[0],
        p[28:34].hex(':'), opts.get(53, b'?').hex(), opts.get(60, b'').decode('ascii', 'replace'))

pk = list(packets(sys.argv[1]))
if len(sys.argv) == 2:
    for i, (s, sp, d, dp, p) in enumerate(pk):
        print(i, '%s:%d -> %s:%d' % (s, sp, d, dp), len(p), describe(p))
else:
    open(sys.argv[3], 'wb').write(pk[int(sys.argv[2])][4])

#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_linux into corpus/linux/: small synthetic kernels in every
format the loader knows (bzImage with gzip, xz, zstd, lz4, bzip2 payloads; ELF vmlinux) and
malformed variants. Input format: one flags byte (bit 0: in-kernel decompression, bit 1: the
last quarter is an initrd), then the image. Needs the zstd and lz4 commands."""
import gzip, lzma, os, struct, subprocess, sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "linux")
KADDR = 0x1000000


def elf(paddr=KADDR, text=4096, bss=4096):
    ph_off = 64
    data_off = 64 + 56
    eh = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    eh += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, paddr, ph_off, 0, 0, 64, 56, 1, 0, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, data_off, 0xffffffff80000000 + paddr, paddr, text,
                     text + bss, 0x200000)
    body = bytes((i * 7 + 1) & 0xff for i in range(text))
    return eh + ph + body


def tool(cmd, data):
    return subprocess.run(cmd, input=data, stdout=subprocess.PIPE, check=True).stdout


def compress(kind, data):
    if kind == "gzip":
        z = gzip.compress(data, 9, mtime=0)
    elif kind == "xz":
        z = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                          filters=[{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 6}])
    elif kind == "zstd":
        z = tool(["zstd", "-19", "-q", "-c"], data)
    elif kind == "lz4":
        z = tool(["lz4", "-l", "-9", "-q", "-c"], data)
    elif kind == "bzip2":
        z = b"BZh91AY&SY" + bytes(40)
    return z + struct.pack("<I", len(data))


def bzimage(payload, version=0x20F, loadflags=1, xloadflags=0x7F, init_size=0x400000):
    setup = bytearray(1024)
    setup[0x1F1] = 1
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200] = 0xEB
    setup[0x201] = 0x6A
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)
    struct.pack_into("<I", setup, 0x230, 0x200000)
    setup[0x234] = 1
    setup[0x235] = 21
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, 2047)
    struct.pack_into("<I", setup, 0x248, 0x200)
    struct.pack_into("<I", setup, 0x24C, len(payload))
    struct.pack_into("<Q", setup, 0x258, KADDR)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + b"\x90" * 0x200 + payload


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {}
    for kind in ("gzip", "xz", "zstd", "lz4", "bzip2"):
        k = bzimage(compress(kind, elf()))
        seeds[f"bz-{kind}"] = b"\x00" + k
        seeds[f"bz-{kind}-initrd"] = b"\x02" + k + b"INITRD" * 200
    seeds["bz-xz-in-kernel"] = b"\x01" + bzimage(compress("xz", elf()))
    seeds["elf"] = b"\x00" + elf()
    seeds["elf-low"] = b"\x00" + elf(paddr=0x80000)
    good = bzimage(compress("gzip", elf()))
    seeds["bad-truncated"] = b"\x00" + good[:700]
    seeds["bad-old-protocol"] = b"\x00" + bzimage(compress("gzip", elf()), version=0x20B)
    seeds["bad-zimage"] = b"\x00" + bzimage(compress("gzip", elf()), loadflags=0)
    seeds["bad-no-64bit"] = b"\x00" + bzimage(compress("gzip", elf()), xloadflags=2)
    seeds["bad-init-size"] = b"\x00" + bzimage(compress("gzip", elf()), init_size=0xF0000000)
    corrupt = bytearray(bzimage(compress("xz", elf())))
    for i in range(1024 + 0x200 + 30, 1024 + 0x200 + 60):
        corrupt[i] ^= 0x5A
    seeds["bad-corrupt-xz"] = b"\x00" + bytes(corrupt)
    huge = bytearray(good)
    struct.pack_into("<I", huge, len(huge) - 4, 0xFFFFFFF0)
    seeds["bad-declared-huge"] = b"\x00" + bytes(huge)
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {OUT}")


if __name__ == "__main__":
    sys.exit(main())

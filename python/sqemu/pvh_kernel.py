# SPDX-License-Identifier: GPL-2.0-or-later
"""Write DIR/vmlinux, the uncompressed ELF kernel inside DIR/vmlinuz.

QEMU boots an ELF kernel that carries a PVH entry note (Linux with
CONFIG_PVH, as Debian's amd64 kernels are) straight at that entry: no
bzImage decompressor runs in the guest.  Under TCG the decompressor is
slow (Debian's kernel is xz-compressed: about 5 s of a 17 s boot here), so
scripts/sqemu/vmrun boots DIR/vmlinux when it is there and not older than
DIR/vmlinuz.  mkimage runs this after writing DIR/vmlinuz.  QEMU keeps a
copy of an ELF kernel's segments to reload them at reset, about 50 MiB of
resident memory for Debian's kernel; the initramfs guest (mkguest), whose
runs measure QEMU's memory overhead, therefore keeps booting vmlinuz.

Exit status 0 when DIR/vmlinux was written, 1 on error (no vmlinuz, an
unknown compression, no ELF inside, no PVH note: vmrun then boots
vmlinuz), 2 on bad usage.
"""

import argparse
import lzma
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from sqemu.initramfs_guest import install_file

# XEN_ELFNOTE_PHYS32_ENTRY, the note QEMU looks for to boot a PVH kernel
PVH_NOTE_TYPE = 18
ELF_MAGIC = b"\x7fELF"
PT_NOTE = 4
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class KernelError(Exception):
    """A kernel this script cannot turn into a PVH-bootable ELF."""


def unxz(data):
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def gunzip(data):
    # The stream is followed by the rest of the bzImage: decompress one
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def unzstd(data):
    if not shutil.which("zstd"):
        raise KernelError("zstd-compressed kernel and no zstd command "
                          "(apt-get install zstd)")
    done = subprocess.run(["zstd", "-d", "-c", "-q"], input=data,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          check=False)
    # zstd complains about the bytes after the frame; the frame is whole
    if not done.stdout:
        raise KernelError("zstd: " + done.stderr.decode(errors="replace"))
    return done.stdout


DECOMPRESSORS = ((XZ_MAGIC, "xz", unxz), (GZIP_MAGIC, "gzip", gunzip),
                 (ZSTD_MAGIC, "zstd", unzstd))


def elf_notes(elf):
    """(name, type) of every note in the PT_NOTE segments of a 64-bit
    little-endian ELF file."""
    if elf[:4] != ELF_MAGIC or elf[4] != 2 or elf[5] != 1:
        raise KernelError("not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    notes = []
    for i in range(phnum):
        base = phoff + i * phentsize
        if base + 56 > len(elf):
            raise KernelError("ELF program headers out of the file")
        ptype, = struct.unpack_from("<I", elf, base)
        offset, = struct.unpack_from("<Q", elf, base + 8)
        size, = struct.unpack_from("<Q", elf, base + 32)
        if ptype != PT_NOTE:
            continue
        pos, end = offset, min(offset + size, len(elf))
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            notes.append((name.decode(errors="replace"), ntype))
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return notes


def extract(vmlinuz):
    """The PVH-bootable ELF inside a bzImage, and its compression."""
    data = vmlinuz.read_bytes()
    found = [(data.find(magic), name, fn) for magic, name, fn in DECOMPRESSORS
             if data.find(magic) >= 0]
    for offset, name, decompress in sorted(found):
        try:
            elf = decompress(data[offset:])
        except (lzma.LZMAError, zlib.error, EOFError):
            continue
        if elf[:4] != ELF_MAGIC:
            continue
        if ("Xen", PVH_NOTE_TYPE) not in elf_notes(elf):
            raise KernelError(f"{vmlinuz}: the kernel has no PVH entry note "
                              "(CONFIG_PVH); QEMU cannot boot it as ELF")
        return elf, name
    raise KernelError(f"{vmlinuz}: no xz, gzip or zstd stream holding an ELF "
                      "kernel found")


def write_vmlinux(guest_dir):
    """Write guest_dir/vmlinux from guest_dir/vmlinuz; (size, compression)."""
    vmlinuz = guest_dir / "vmlinuz"
    if not vmlinuz.is_file():
        raise KernelError(f"{vmlinuz} not found")
    elf, compression = extract(vmlinuz)
    install_file(guest_dir / "vmlinux", lambda out: out.write(elf))
    return len(elf), compression


def main():
    parser = argparse.ArgumentParser(
        description="Write DIR/vmlinux, the uncompressed ELF kernel inside "
                    "DIR/vmlinuz, which QEMU boots through its PVH entry "
                    "(faster under TCG: no decompressor runs in the guest); "
                    "scripts/sqemu/vmrun boots it when present.")
    parser.add_argument("guest_dir", type=Path, metavar="DIR",
                        help="a guest directory made by mkguest or mkimage")
    args = parser.parse_args()
    try:
        size, compression = write_vmlinux(args.guest_dir)
    except (KernelError, OSError) as err:
        print(f"pvh-kernel: {err}", file=sys.stderr)
        return 1
    print(f"{args.guest_dir / 'vmlinux'}: {size / 1048576:.1f} MiB ELF "
          f"with a PVH entry ({compression} in vmlinuz)")
    return 0

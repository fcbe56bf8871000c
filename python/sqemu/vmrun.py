# SPDX-License-Identifier: GPL-2.0-or-later
"""Boot the sQemu test guest on a disk image and report what it measured.

Two guests: the initramfs guest (scripts/sqemu/mkguest, the default) and the
Debian guest (--guest debian, scripts/sqemu/mkimage), whose root disk may be
the top of a chain (--root).  Both report on their serial console with
SQEMU-READY / SQEMU-RESULT / SQEMU-ERROR / SQEMU-DONE lines.  This script
measures on the host the wall time to SQEMU-READY and to QEMU's exit and the
peak RSS of the QEMU process.  With --accel auto it first probes whether a
KVM guest boots and falls back to TCG if it does not.

With --live-snapshots N (the Debian guest's writer workload) it takes N live
snapshots of the data disk over QMP (blockdev-snapshot-sync) while the guest
writes, timing each, then tells the guest to stop and verify.  With
--layer-blockdev OPTS the data disk's chain is opened as one -blockdev per
layer, each with OPTS (e.g. stock QEMU's L2 cache split per layer).

With --io-trace PREFIX (the Debian guest) QEMU starts paused (-S) with a
QMP socket; block-io-trace-start (an sQemu command: stock QEMU has none)
records the root disk (-drive root) into PREFIX-root.iotrace and the data
disk (-drive data) into PREFIX-data.iotrace, then the guest runs (cont).
QEMU completes the trace files when it exits; the summary reports their
records.
"""

import argparse
import collections
import dataclasses
import json
import os
import re
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqemu import paths, trace_file, util
from sqemu import qmp as sqemu_qmp

DEFAULT_GUEST_DIR = Path("build/guest")
MKGUEST = Path(paths.SCRIPTS) / "mkguest"
MKIMAGE = Path(paths.SCRIPTS) / "mkimage"
DEFAULT_DEBIAN_DIR = Path("build/guest-debian")
GUEST_FILES = {"initramfs": ("vmlinuz", "initramfs.cpio.gz"),
               "debian": ("vmlinuz", "initrd.img", "debian.qcow2")}
WORKLOADS = {"initramfs": r"none|dd|dd:\w+",
             "debian": r"none|dd|dd:\w+|fio-randread(:\d+)?|rocksdb(:\d+)?"
                       r"|writer"}
CONSOLE_TAIL = 20
OVERHEAD_SAMPLE_S = 0.25
# The first line of a mapping in /proc/PID/smaps: "start-end perms ..."
SMAPS_MAPPING = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")
MARKER = re.compile(r"SQEMU-(READY|RESULT|ERROR|DONE|WRITING)\b\s*(.*)")
FAST_INIT = "init=/usr/local/sbin/sqemu-init"
QCOW2_MAGIC = b"QFI\xfb"
ACCEL_ARGS = {
    "kvm": ["-accel", "kvm", "-cpu", "host"],
    "tcg": ["-accel", "tcg", "-cpu", "max"],
}


class RunError(Exception):
    """A failure that ends the script; the message is shown to the user."""


@dataclasses.dataclass
class GuestRun:
    """What one QEMU run produced."""

    ready_seconds: float | None = None
    exit_seconds: float | None = None
    exit_status: int | None = None
    peak_rss_kib: int | None = None
    peak_overhead_kib: int | None = None
    peak_overhead_no_code_kib: int | None = None
    peak_tcg_code_kib: int | None = None
    timed_out: bool = False
    guest_rc: int | None = None
    result: dict | None = None
    errors: list = dataclasses.field(default_factory=list)
    console: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=CONSOLE_TAIL))
    qemu_stderr: list = dataclasses.field(default_factory=list)
    writing: threading.Event = dataclasses.field(
        default_factory=threading.Event)
    snapshot_seconds: list = dataclasses.field(default_factory=list)
    snapshot_error: str | None = None
    top: str | None = None
    trace_error: str | None = None


def key_values(text):
    """Parse 'a=1 b=2' into a dict of strings."""
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def extra_drive_options(args):
    """--extra-drive-opts as a dict; a bad entry is a RunError."""
    opts = {}
    for item in (args.extra_drive_opts or "").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise RunError(f"bad --extra-drive-opts entry '{item}'; "
                           "expected KEY=VALUE")
        opts[key] = value
    return opts


def drive_option(args, disk=None, drive_id=None):
    """A -drive argument; --extra-drive-opts entries override defaults.
    With @drive_id, the drive has no device (if=none) and that id."""
    opts = {"file": str(disk or args.disk).replace(",", ",,"),
            "format": args.format, "if": "none" if drive_id else "virtio",
            "readonly": "off" if args.writable else "on", "cache": "none"}
    if drive_id:
        opts["id"] = drive_id
    opts.update(extra_drive_options(args))
    return ",".join(f"{k}={v}" for k, v in opts.items())


def backing_name(image):
    """The backing file name a qcow2 header records, as it records it
    (None without one)."""
    with open(image, "rb") as f:
        header = f.read(20)
        if len(header) < 20 or header[:4] != QCOW2_MAGIC:
            raise RunError(f"{image} is not a qcow2 image")
        offset, size = struct.unpack(">QI", header[8:20])
        if not offset:
            return None
        f.seek(offset)
        return f.read(size).decode()


def layer_blockdevs(args):
    """-blockdev arguments opening the data disk's chain one node per layer,
    each with --layer-blockdev's options, and the top's node name.

    Each layer's file is named as the header above it names it, so that
    QEMU does not take the backing file as overridden: it would then name
    every node with a json: name of its whole chain, rebuilt for the
    whole chain at every attach (stock QEMU 7.2 takes 48 s to open 500
    layers made by qemu-img create -b with relative names, 2 s this way).
    QEMU runs in the top's directory (qemu_cwd), so a relative name
    recorded by a layer in that directory means the same file to QEMU; a
    chain with a relative name recorded anywhere else gets absolute names
    throughout (and QEMU's json: names)."""
    top = os.path.abspath(args.disk)
    topdir = os.path.dirname(top)
    chain, names = [top], [top]
    while True:
        name = backing_name(chain[-1])
        if name is None:
            break
        below = os.path.join(os.path.dirname(chain[-1]), name)
        if len(chain) > 65536 or below in chain:
            raise RunError(f"{args.disk}: backing chain loops")
        chain.append(below)
        names.append(name)
    if not all(os.path.isabs(name) or os.path.dirname(overlay) == topdir
               for name, overlay in zip(names[1:], chain)):
        names = chain
    extra = {}
    for item in args.layer_blockdev.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise RunError(f"bad --layer-blockdev entry '{item}'; "
                           "expected KEY=VALUE")
        extra[key] = int(value) if value.isdigit() else value
    cmd, below = [], None
    for depth, image in enumerate(reversed(names), 1):
        node = {"driver": "qcow2", "node-name": f"layer{depth}",
                "read-only": not args.writable,
                "cache": {"direct": True},
                "file": {"driver": "file", "filename": image,
                         "cache": {"direct": True}},
                "backing": below, **extra}
        cmd += ["-blockdev", json.dumps(node)]
        below = node["node-name"]
    return cmd, below


def qemu_command(args, accel, workload):
    """Full QEMU command line for one guest run."""
    guest = args.guest_dir
    accel_args = list(ACCEL_ARGS[accel])
    if accel == "tcg" and args.tcg_tb_size:
        accel_args[1] += f",tb-size={args.tcg_tb_size}"
    common = [args.qemu, "-nodefaults", "-display", "none", "-no-reboot",
              "-serial", "stdio", "-machine", "q35", "-smp", "1",
              "-m", str(args.memory), *accel_args,
              "-kernel", str(guest_kernel(args))]
    if args.qmp:
        common += ["-qmp", f"unix:{args.qmp},server=on,wait=off"]
    if args.io_trace:
        # Paused until the traces are on (start_traces)
        common.append("-S")
    if args.guest == "initramfs":
        return [*common, "-initrd", str(guest / "initramfs.cpio.gz"),
                "-append", f"console=ttyS0 quiet panic=-1 "
                           f"sqemu.workload={workload}",
                "-drive", drive_option(args)]
    init = f" {FAST_INIT}" if args.fast_init else ""
    root = {"file": str(root_disk(args)).replace(",", ",,"),
            "format": args.format, "if": "none", "id": "root",
            "readonly": "on", "cache": "none"}
    # Explicit devices in this order, so that the root disk is /dev/vda
    cmd = [*common, "-initrd", str(guest / "initrd.img"),
           "-append", f"console=ttyS0 root=/dev/vda ro quiet panic=-1 "
                      f"sqemu.workload={workload}{init}",
           "-drive", ",".join(f"{k}={v}" for k, v in root.items()),
           "-device", "virtio-blk-pci,drive=root"]
    if args.disk and args.layer_blockdev:
        blockdevs, top = layer_blockdevs(args)
        cmd += [*blockdevs, "-device", f"virtio-blk-pci,drive={top}"]
    elif args.disk:
        cmd += ["-drive", drive_option(args, drive_id="data"),
                "-device", "virtio-blk-pci,drive=data"]
    return cmd


def qemu_cwd(args):
    """Where QEMU runs: the data disk's directory with --layer-blockdev
    (see layer_blockdevs), else here."""
    return args.disk.parent if args.disk and args.layer_blockdev else None


def guest_kernel(args):
    """The kernel to boot: GUEST_DIR/vmlinux (the ELF pvh-kernel extracts,
    booted at its PVH entry: no decompressor runs in the guest, seconds
    saved under TCG) when it is there and not older than vmlinuz, else
    vmlinuz."""
    vmlinuz = args.guest_dir / "vmlinuz"
    vmlinux = args.guest_dir / "vmlinux"
    try:
        if vmlinux.stat().st_mtime >= vmlinuz.stat().st_mtime:
            return vmlinux
    except OSError:
        pass
    return vmlinuz


def root_disk(args):
    """The Debian guest's root disk: --root, else the image mkimage made."""
    return args.root or args.guest_dir / "debian.qcow2"


def handle_console_line(run, line, started, verbose):
    """Record one console line and any sQemu marker it carries."""
    run.console.append(line)
    if verbose:
        print(line, file=sys.stderr, flush=True)
    match = MARKER.search(line)
    if not match:
        return
    kind, rest = match.groups()
    if kind == "WRITING":
        run.writing.set()
    elif kind == "READY" and run.ready_seconds is None:
        run.ready_seconds = time.monotonic() - started
    elif kind == "RESULT":
        run.result = key_values(rest)
    elif kind == "ERROR":
        run.errors.append(rest)
    elif kind == "DONE":
        run.guest_rc = int(key_values(rest).get("rc", "1"))


def memory_overhead_kib(pid, ram_kib):
    """QEMU's resident memory minus the guest RAM's, from /proc/PID/smaps,
    and how much of it is TCG's translated-code buffer.

    The guest RAM is the anonymous mapping of exactly the guest's size;
    the code buffer is the anonymous executable one (TCG only; KVM has
    none).  None if the process is gone or no guest RAM mapping is found.
    """
    total = ram = code = 0
    found = False
    size = None
    anon_exec = False
    try:
        with open(f"/proc/{pid}/smaps", encoding="ascii",
                  errors="replace") as smaps:
            for line in smaps:
                if SMAPS_MAPPING.match(line):
                    fields = line.split()
                    anon_exec = len(fields) == 5 and "x" in fields[1]
                elif line.startswith("Size:"):
                    size = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
                    total += rss
                    if anon_exec:
                        code += rss
                    elif size == ram_kib and not found:
                        ram, found = rss, True
    except (OSError, ValueError):
        return None
    return (total - ram, code) if found else None


def pump_output(proc, run, started, deadline, verbose, ram_kib=None):
    """Read QEMU's stdout (the console) and stderr until both reach EOF.

    Samples QEMU's memory overhead (RSS minus guest RAM) every
    OVERHEAD_SAMPLE_S if ram_kib is given.  Returns False if the deadline
    passed first.
    """
    buffers = {proc.stdout: b"", proc.stderr: b""}
    next_sample = 0.0
    with selectors.DefaultSelector() as sel:
        for stream in buffers:
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map():
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return False
            if ram_kib and now >= next_sample:
                sample = memory_overhead_kib(proc.pid, ram_kib)
                if sample is not None:
                    overhead, code = sample
                    run.peak_overhead_kib = max(run.peak_overhead_kib or 0,
                                                overhead)
                    run.peak_overhead_no_code_kib = max(
                        run.peak_overhead_no_code_kib or 0, overhead - code)
                    run.peak_tcg_code_kib = max(run.peak_tcg_code_kib or 0,
                                                code)
                next_sample = now + OVERHEAD_SAMPLE_S
            if ram_kib:
                remaining = min(remaining, OVERHEAD_SAMPLE_S)
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    chunk = b"\n" if buffers[key.fileobj] else b""
                *lines, buffers[key.fileobj] = (
                    buffers[key.fileobj] + chunk).split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip("\r")
                    if key.fileobj is proc.stderr:
                        run.qemu_stderr.append(line)
                    else:
                        handle_console_line(run, line, started, verbose)
    return True


def snapshot_name(args, i):
    """File of the i-th live snapshot, next to the data disk."""
    stem = Path(args.disk).with_suffix("").name
    return os.path.join(os.path.dirname(os.path.abspath(args.disk)),
                        f"{stem}-snap-{i:04d}.qcow2")


def take_snapshots(args, proc, run):
    """Thread: once the guest writes, take --live-snapshots snapshots of the
    data disk over QMP, timing each, then tell the guest to stop."""
    qmp = None
    try:
        if not run.writing.wait(args.timeout):
            return
        time.sleep(args.snapshot_interval)
        qmp = sqemu_qmp.Monitor(args.qmp, 30, RunError)
        for i in range(1, args.live_snapshots + 1):
            name = snapshot_name(args, i)
            t0 = time.monotonic()
            qmp.cmd("blockdev-snapshot-sync", device="data",
                    **{"snapshot-file": name, "format": "qcow2"})
            run.snapshot_seconds.append(time.monotonic() - t0)
            run.top = name
            time.sleep(args.snapshot_interval)
    except (RunError, OSError, ValueError) as e:
        run.snapshot_error = str(e)
    finally:
        if qmp:
            qmp.close()
        try:
            proc.stdin.write(b"stop\n")
            proc.stdin.flush()
        except OSError:
            pass


def trace_targets(args):
    """[(-drive id, trace file)] that --io-trace records: the root disk,
    and the data disk if there is one."""
    if not args.io_trace:
        return []
    drives = ["root"] + (["data"] if args.disk else [])
    return [(drive, f"{args.io_trace}-{drive}.iotrace") for drive in drives]


def start_trace_error(message, qemu):
    """What to say when block-io-trace-start failed with QMP's @message."""
    if "has not been found" in message or "CommandNotFound" in message:
        return (f"{qemu} has no block-io-trace-start: only sQemu's "
                "qemu-system-x86_64 (build/qemu) records I/O traces "
                "(--io-trace)")
    return message


def start_traces(monitor, targets, qemu):
    """Start a trace per (drive, file) of @targets through QMP @monitor,
    then let the paused guest run (cont)."""
    for drive, path in targets:
        try:
            monitor.cmd("block-io-trace-start", device=drive, filename=path)
        except RunError as e:
            raise RunError(f"tracing drive {drive}: "
                           f"{start_trace_error(str(e), qemu)}")
    monitor.cmd("cont")


def trace_guest(args, proc, run):
    """Thread: start --io-trace's traces in the paused QEMU and let it run;
    on failure kill QEMU and say why in @run."""
    qmp = None
    try:
        qmp = sqemu_qmp.Monitor(args.qmp, 30, RunError, timeout=60)
        start_traces(qmp, trace_targets(args), args.qemu)
    except (RunError, OSError, ValueError) as e:
        run.trace_error = str(e)
        try:
            proc.kill()
        except OSError:
            pass
    finally:
        if qmp:
            qmp.close()


def trace_summary(targets):
    """{drive: what its trace file holds} of @targets (trace_targets)
    once QEMU has exited: the file, its records, those dropped, whether
    QEMU completed it, and warnings; or the error reading it."""
    traces = {}
    for drive, path in targets:
        try:
            trace = trace_file.Trace(path)
        except (OSError, trace_file.TraceFileError) as e:
            traces[drive] = {"file": path, "error": str(e)}
            continue
        traces[drive] = {"file": path, "records": len(trace.requests),
                         "dropped": trace.dropped,
                         "complete": trace.complete,
                         "disk_length": trace.disk_length,
                         "warnings": trace.warnings()}
    return traces


def reap(proc, deadline):
    """Wait for QEMU to exit; return (status, rusage) or None at deadline."""
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, rusage
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def kill(proc):
    """Kill QEMU and reap it; return its rusage."""
    proc.kill()
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return rusage


def run_guest(args, accel, workload, timeout):
    """Boot the guest once and collect what it reports."""
    cmd = qemu_command(args, accel, workload)
    run = GuestRun()
    started = time.monotonic()
    deadline = started + timeout
    live = args.live_snapshots and workload == "writer"
    proc = subprocess.Popen(cmd, stdin=(subprocess.PIPE if live
                                        else subprocess.DEVNULL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=qemu_cwd(args))
    if live:
        threading.Thread(target=take_snapshots, args=(args, proc, run),
                         daemon=True).start()
    if args.io_trace:
        threading.Thread(target=trace_guest, args=(args, proc, run),
                         daemon=True).start()
    try:
        reaped = None
        if pump_output(proc, run, started, deadline, args.verbose,
                       args.memory * 1024):
            reaped = reap(proc, deadline)
        if reaped:
            run.exit_status, rusage = reaped
        else:
            run.timed_out = True
            rusage = kill(proc)
        run.exit_seconds = time.monotonic() - started
        run.peak_rss_kib = rusage.ru_maxrss
    finally:
        if proc.returncode is None:
            kill(proc)
        proc.stdout.close()
        proc.stderr.close()
        if proc.stdin:
            proc.stdin.close()
    return run


def kvm_usable():
    """None if /dev/kvm opens read-write, else the reason it does not."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return f"/dev/kvm not usable: {e.strerror}"
    return None


def probe_kvm(args):
    """Boot a 'none' guest under KVM; return (usable, note for the user)."""
    problem = kvm_usable()
    if problem:
        return False, problem
    print(f"vmrun: probing KVM (up to {args.kvm_probe_timeout:g} s)",
          file=sys.stderr)
    run = run_guest(args, "kvm", "none", args.kvm_probe_timeout)
    if run.ready_seconds is not None:
        return True, f"guest ready in {run.ready_seconds:.1f} s"
    if run.timed_out:
        return False, (f"guest did not boot within "
                       f"{args.kvm_probe_timeout:g} s")
    return False, f"guest did not boot: {run_failure(run, 0)}"


def choose_accel(args):
    """Accelerator to use and a note on how it was chosen."""
    if args.accel != "auto":
        return args.accel, "requested"
    usable, note = probe_kvm(args)
    if usable:
        return "kvm", f"kvm probe: {note}"
    print(f"vmrun: KVM {note}; falling back to TCG", file=sys.stderr)
    return "tcg", f"kvm probe: {note}"


def run_failure(run, timeout):
    """Why a run failed, or None if it succeeded."""
    if run.trace_error:
        return f"--io-trace: {run.trace_error}"
    if run.timed_out:
        state = "booted" if run.ready_seconds is not None else "not ready"
        return f"timed out after {timeout:g} s (guest {state})"
    if run.exit_status != 0:
        last = run.qemu_stderr[-1] if run.qemu_stderr else "no message"
        return f"qemu exited with status {run.exit_status}: {last}"
    if run.guest_rc is None:
        return "guest exited without reporting SQEMU-DONE"
    if run.guest_rc != 0:
        detail = "; ".join(run.errors) or "no error message"
        return f"guest reported rc={run.guest_rc}: {detail}"
    if run.ready_seconds is None:
        return "guest never reported SQEMU-READY"
    if run.snapshot_error:
        return f"live snapshot {len(run.snapshot_seconds) + 1}: " \
               f"{run.snapshot_error}"
    return None


def rounded(seconds):
    """Seconds to milliseconds precision, keeping None."""
    return None if seconds is None else round(seconds, 3)


def summary(args, accel, note, run, error, traces=None):
    """Everything worth reporting about a run, as a JSON-able dict."""
    data = {
        "guest": args.guest, "disk": args.disk and str(args.disk),
        "root": (str(root_disk(args)) if args.guest == "debian" else None),
        "format": args.format, "qemu": args.qemu,
        "kernel": guest_kernel(args).name,
        "workload": args.workload, "accelerator": accel, "accel_note": note,
        "boot_seconds": rounded(run.ready_seconds),
        "exit_seconds": rounded(run.exit_seconds),
        "peak_rss_kib": run.peak_rss_kib,
        "peak_overhead_kib": run.peak_overhead_kib,
        "peak_overhead_no_code_kib": run.peak_overhead_no_code_kib,
        "peak_tcg_code_kib": run.peak_tcg_code_kib,
        "memory_mib": args.memory, "guest_rc": run.guest_rc,
        "error": error,
    }
    if run.result:
        data["guest_result"] = run.result
        if "bytes" in run.result:
            data.update(guest_bytes=int(run.result["bytes"]),
                        guest_seconds=float(run.result["seconds"]),
                        guest_bs=run.result.get("bs"))
        if "iops" in run.result:
            data["guest_iops"] = float(run.result["iops"])
    if args.live_snapshots:
        data.update(snapshot_seconds=[round(t, 4)
                                      for t in run.snapshot_seconds],
                    top=run.top)
    if traces is not None:
        data["io_traces"] = traces
    return data


def mib_per_s(data):
    """Throughput string for the guest's dd, if it took measurable time."""
    if not data["guest_seconds"]:
        return "too fast to measure"
    return f"{data['guest_bytes'] / data['guest_seconds'] / 2**20:.1f} MiB/s"


def print_summary(data):
    """Print the human-readable summary of a run on stdout."""
    print(f"accelerator: {data['accelerator']} ({data['accel_note']})")
    print(f"kernel: {data['kernel']}"
          f"{' (PVH entry)' if data['kernel'] == 'vmlinux' else ''}")
    if data["boot_seconds"] is not None:
        print(f"boot to ready: {data['boot_seconds']:.1f} s")
    if "guest_bytes" in data:
        print(f"guest {data['workload']}: {data['guest_bytes']} bytes in "
              f"{data['guest_seconds']:.2f} s ({mib_per_s(data)})")
    if "guest_iops" in data:
        print(f"guest IOPS: {data['guest_iops']:.0f}")
    if data.get("snapshot_seconds"):
        times = sorted(data["snapshot_seconds"])
        print(f"live snapshots: {len(times)}, median "
              f"{times[len(times) // 2] * 1000:.0f} ms, max "
              f"{times[-1] * 1000:.0f} ms; top now {data['top']}")
    for drive, trace in (data.get("io_traces") or {}).items():
        if "error" in trace:
            print(f"I/O trace of {drive}: {trace['error']}")
            continue
        print(f"I/O trace of {drive}: {trace['records']} requests in "
              f"{trace['file']}, {trace['dropped']} dropped"
              f"{'' if trace['complete'] else ' (not completed by QEMU)'}")
    print(f"launch to exit: {data['exit_seconds']:.1f} s")
    print(f"qemu peak RSS: {data['peak_rss_kib'] / 1024:.0f} MiB")
    if data["peak_overhead_kib"] is not None:
        print(f"qemu peak overhead (RSS minus guest RAM): "
              f"{data['peak_overhead_kib'] / 1024:.1f} MiB")
        print(f"  of which TCG translated code: "
              f"{data['peak_tcg_code_kib'] / 1024:.1f} MiB (peak); "
              f"without it: {data['peak_overhead_no_code_kib'] / 1024:.1f} "
              f"MiB")


def print_tail(what, lines):
    """Show the last lines of some output on stderr."""
    if not lines:
        print(f"--- no {what} output ---", file=sys.stderr)
    else:
        print(f"--- last {len(lines)} lines of {what} ---", file=sys.stderr)
    for line in lines:
        print(line, file=sys.stderr)


def ensure_guest(guest, guest_dir):
    """Build the guest (mkguest or mkimage) if any of its files is missing."""
    if all((guest_dir / name).is_file() for name in GUEST_FILES[guest]):
        return
    builder = MKGUEST if guest == "initramfs" else MKIMAGE
    print(f"vmrun: building the {guest} guest in {guest_dir}",
          file=sys.stderr)
    built = subprocess.run([sys.executable, str(builder),
                            "--output-dir", str(guest_dir)],
                           stdout=subprocess.DEVNULL, check=False)
    if built.returncode != 0:
        raise RunError(f"{builder.name} failed to build the guest in "
                       f"{guest_dir}")


def check_inputs(args):
    """Fail early on a missing disk or QEMU; build the guest if needed."""
    for disk in (args.disk, args.root):
        if disk and not disk.is_file() and not disk.is_block_device():
            raise RunError(f"disk image not found: {disk}")
    extra_drive_options(args)
    if not os.access(args.qemu, os.X_OK):
        raise RunError(f"qemu binary not executable: {args.qemu} "
                       "(install the Debian package qemu-system-x86 or "
                       "pass --qemu)")
    ensure_guest(args.guest, args.guest_dir)


def run(args):
    """Check inputs, pick the accelerator, run the workload, report."""
    check_inputs(args)
    accel, note = choose_accel(args)
    with tempfile.TemporaryDirectory(prefix="sqemu-vmrun-") as tmp:
        if args.live_snapshots or args.io_trace:
            args.qmp = os.path.join(tmp, "qmp.sock")
        guest_run = run_guest(args, accel, args.workload, args.timeout)
    error = run_failure(guest_run, args.timeout)
    traces = None
    if args.io_trace and not guest_run.trace_error:
        traces = trace_summary(trace_targets(args))
        unreadable = [f"{d}: {t['error']}" for d, t in traces.items()
                      if "error" in t]
        if unreadable and not error:
            error = "I/O trace " + "; ".join(unreadable)
    data = summary(args, accel, note, guest_run, error, traces)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    print_summary(data)
    if error:
        print_tail("console", guest_run.console)
        if guest_run.qemu_stderr:
            print_tail("qemu stderr", guest_run.qemu_stderr[-CONSOLE_TAIL:])
        raise RunError(error)


def positive(text):
    """argparse type: a positive number of seconds."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def parse_args(argv=None):
    """Command line options (@argv, default sys.argv's)."""
    parser = argparse.ArgumentParser(
        description="Boot an sQemu test guest (the initramfs guest of "
        "scripts/sqemu/mkguest or the Debian guest of scripts/sqemu/mkimage) "
        "with its disks attached read-only as virtio-blk, run a workload and "
        "print boot time, guest throughput and QEMU's peak RSS.")
    parser.add_argument("--guest", choices=("initramfs", "debian"),
                        default="initramfs",
                        help="initramfs guest (mkguest) or Debian guest "
                        "(mkimage) (default: %(default)s)")
    parser.add_argument("--disk", type=Path, metavar="IMAGE",
                        help="data disk (top of the chain) the workload "
                        "reads; required with the initramfs guest")
    parser.add_argument("--root", type=Path, metavar="IMAGE",
                        help="Debian guest's root disk, e.g. the top of a "
                        "chain over debian.qcow2 (default: GUEST_DIR/"
                        "debian.qcow2)")
    parser.add_argument("--format", default="qcow2",
                        help="image format (default: %(default)s)")
    parser.add_argument("--qemu", metavar="PATH",
                        help="qemu-system-x86_64 binary (default: Debian's "
                        "stock one, from scripts/sqemu/stock-qemu)")
    parser.add_argument("--guest-dir", type=Path, metavar="DIR",
                        help="guest kernel and initramfs (or initrd and "
                        "root image); built with mkguest or mkimage if "
                        f"missing (default: {DEFAULT_GUEST_DIR}, or "
                        f"{DEFAULT_DEBIAN_DIR} with --guest debian)")
    parser.add_argument("--workload", default="dd",
                        help="guest workload: none, dd (bs=4M) or dd:BS; "
                        "the Debian guest also fio-randread[:SECONDS] "
                        "(default: %(default)s)")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"),
                        default="auto",
                        help="accelerator; auto probes KVM and falls back "
                        "to TCG (default: %(default)s)")
    parser.add_argument("--memory", type=int, default=512, metavar="MIB",
                        help="guest RAM in MiB (default: %(default)s)")
    parser.add_argument("--timeout", type=positive, default=600,
                        metavar="SECONDS", help="limit for the whole run "
                        "(default: %(default)s)")
    parser.add_argument("--kvm-probe-timeout", type=positive, default=30,
                        metavar="SECONDS", help="how long the KVM probe "
                        "may take to boot (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the results as JSON to FILE")
    parser.add_argument("--extra-drive-opts", metavar="STR",
                        help="extra -drive options, e.g. cache=writeback; "
                        "they override the defaults")
    parser.add_argument("--verbose", action="store_true",
                        help="copy the serial console to stderr")
    parser.add_argument("--fast-init", action="store_true",
                        help="Debian guest: run the workload from "
                        "/usr/local/sbin/sqemu-init instead of booting "
                        "systemd (boot time then is not a real boot's)")
    parser.add_argument("--writable", action="store_true",
                        help="attach the data disk read-write")
    parser.add_argument("--layer-blockdev", metavar="OPTS",
                        help="open the data disk's chain as one -blockdev "
                        "per layer, each with these qcow2 options, e.g. "
                        "l2-cache-size=2048,l2-cache-entry-size=1024")
    parser.add_argument("--live-snapshots", type=int, default=0,
                        metavar="N", help="with --workload writer: take N "
                        "live snapshots of the data disk over QMP while the "
                        "guest writes (files DISK-snap-NNNN.qcow2 next to "
                        "the disk), then let the guest verify its data")
    parser.add_argument("--snapshot-interval", type=positive, default=0.2,
                        metavar="SECONDS", help="wait between live "
                        "snapshots (default: %(default)s)")
    parser.add_argument("--tcg-tb-size", type=int, metavar="MIB",
                        help="TCG translation buffer size (tb-size), for "
                        "both builds alike (default: QEMU's)")
    parser.add_argument("--io-trace", metavar="PREFIX",
                        help="Debian guest, ours' qemu-system only: record "
                        "the root disk's requests into PREFIX-root.iotrace "
                        "and the data disk's into PREFIX-data.iotrace "
                        "(block-io-trace-start before the guest starts; "
                        "QEMU completes them when it exits)")
    args = parser.parse_args(argv)
    args.qmp = None
    if not re.fullmatch(WORKLOADS[args.guest], args.workload):
        parser.error(f"bad --workload '{args.workload}' for the "
                     f"{args.guest} guest")
    if args.guest == "initramfs" and not args.disk:
        parser.error("the initramfs guest needs --disk")
    if args.guest == "initramfs" and args.root:
        parser.error("--root is for the Debian guest (--guest debian)")
    if args.live_snapshots and (args.workload != "writer" or not args.disk
                                or not args.writable):
        parser.error("--live-snapshots needs --workload writer, --disk and "
                     "--writable")
    if args.layer_blockdev and not args.disk:
        parser.error("--layer-blockdev needs --disk")
    if args.fast_init and args.guest != "debian":
        parser.error("--fast-init is for the Debian guest")
    if args.io_trace and args.guest != "debian":
        parser.error("--io-trace is for the Debian guest (drives root and "
                     "data)")
    if args.io_trace and args.layer_blockdev:
        parser.error("--io-trace traces -drive data, which "
                     "--layer-blockdev replaces")
    if args.io_trace:
        args.io_trace = os.path.abspath(args.io_trace)
    if args.guest_dir is None:
        args.guest_dir = (DEFAULT_GUEST_DIR if args.guest == "initramfs"
                          else DEFAULT_DEBIAN_DIR)
    if args.qemu is None:
        # Debian's, from its packages (/usr/bin is sQemu's once installed)
        stock = paths.stock_dir()
        if not stock:
            parser.error("no stock QEMU: see stock-qemu's error above")
        args.qemu = os.path.join(stock, "qemu-system-x86_64")
    # Absolute, for QEMU may run elsewhere (qemu_cwd)
    if os.sep in args.qemu:
        args.qemu = os.path.abspath(args.qemu)
    for name in ("disk", "root", "guest_dir"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).absolute())
    return args


def main():
    args = parse_args()
    # QEMU gets killed on the way out
    util.exit_on(signal.SIGTERM)
    return util.run_main("vmrun", lambda: run(args), (RunError, OSError), 1)

# SPDX-License-Identifier: GPL-2.0-or-later
#
# nfs-nodes: NFS storage nodes on this machine, for chains whose layers
# live on NFS servers (nfs:// URLs, QEMU's libnfs driver) without a kernel
# NFS server or client and without tc.
#
# Node i (0, 1, ...) is a network namespace sqemu-nfs<pid>-<i> of its own,
# reached from the host through a veth pair, running rpcbind and
# nfs-ganesha (VFS FSAL) that exports the host directory DIR/node<i> as
# /node<i>, over NFSv3 and v4, read-write, root not squashed.  rpcbind
# takes its socket from /run, so every node gets a private /run (a tmpfs in
# a mount namespace of its own, which ganesha enters to register);
# ganesha's config, logs, pid file and recovery directory live in a state
# directory of the run; nothing is written to /etc or /var/lib/nfs.
# ganesha's ports are fixed (nfsd 2049, mountd 20048), so that the proxy
# below can forward them.
#
# With --latency or --bandwidth, clients reach node i through a proxy in a
# second namespace, sqemu-nfs<pid>-<i>p: it listens on that namespace's
# address on the node's ports (111, 2049, 20048) and forwards every TCP
# connection to the node over a veth pair between the two namespaces.
# Because the ports are the same, the portmapper's answers stay right for
# the proxy's address.  The proxy models one full-duplex link per node:
#   - each direction delays every chunk it forwards by half the round trip
#     (--latency is the round trip added), per connection in order but
#     without serializing connections or chunks behind one another: a
#     chunk is stamped when read and sent when due;
#   - each direction carries at most --bandwidth bits per second, shared
#     by all the node's connections (a chunk occupies the link for
#     size / rate after the link's previous chunk);
#   - it does not model: TCP connection setup (a connect completes at
#     once), losses, reordering, jitter, MTU-sized packets (a chunk is what
#     one recv() returned, up to 256 KiB), UDP (rpcbind over UDP reaches
#     the proxy's address unforwarded: libnfs uses TCP), and the proxy
#     itself adds some tens of microseconds per chunk and direction (one
#     Python process for all the nodes, one thread: an epoll loop with a
#     timerfd; it runs in node 0's proxy namespace and makes the other
#     nodes' sockets in theirs, setns() around socket()); the node's own
#     address stays reachable without the proxy (direct_address), for
#     comparisons.
#
# Nodes get addresses in 10.237.X.0/24, X unused on the host (addresses
# and routes), taken under a lock so that concurrent runs do not collide:
# host 10.237.X.1 / node 10.237.X.2, host 10.237.X.5 / proxy 10.237.X.6,
# proxy 10.237.X.9 / node 10.237.X.10.
#
# The command runs in the foreground ('start') or around a command
# ('run'); either stops and removes everything it started on SIGTERM,
# SIGINT, SIGHUP or an error.  'cleanup' removes what runs that died left.
# The Python API: Nodes(count, directory, latency_ms, bandwidth), a context
# manager whose items are Node (address, export, directory), url(), and
# split_layers() to spread a chain's layers over the nodes.

import argparse
import collections
import ctypes
import errno
import glob
import heapq
import ipaddress
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from sqemu import paths
from sqemu import proc
from sqemu import util

PREFIX = 'sqemu-nfs'
# The veth's host end; interface names have at most 15 characters
VETH_PREFIX = 'sqn'
SUBNETS = ipaddress.ip_network('10.237.0.0/16')
RPCBIND_PORT = 111
NFS_PORT = 2049
MOUNTD_PORT = 20048
PORTS = (RPCBIND_PORT, NFS_PORT, MOUNTD_PORT)
# What ganesha must have registered before a node is up: NFSv3 and
# mountd v3 over TCP, on the fixed ports (program, version, proto, port)
REGISTRATIONS = {(100003, 3, 'tcp', NFS_PORT),
                 (100005, 3, 'tcp', MOUNTD_PORT)}
STARTUP_TIMEOUT = 20
STOP_TIMEOUT = 15
# Exit status meaning "cannot run here" (no root, no namespaces, no
# ganesha): the iotests' and automake's skip code
EXIT_CANNOT_RUN = 77
TOOLS = {'ip': 'iproute2', 'unshare': 'util-linux', 'nsenter': 'util-linux',
         'rpcbind': 'rpcbind', 'rpcinfo': 'rpcbind',
         'ganesha.nfsd': 'nfs-ganesha'}
SBIN_PATH = '/usr/local/sbin:/usr/sbin:/sbin'
# Whoever holds this abstract unix socket picks subnets; the kernel frees
# it when its holder dies, so a dead run cannot leave the lock taken
ADDRESS_LOCK = '\0sqemu-nfs-addresses'

PR_SET_PDEATHSIG = 1


class NodesError(Exception):
    pass


class CannotRun(NodesError):
    """Nodes cannot run on this machine at all (not root, no network
    namespaces, no ganesha): tests skip rather than fail"""


# Pure logic: names, addresses, layers, configuration

def split_layers(layers, nodes):
    """Map layer (1 = base .. @layers = top) -> node index (0 .. @nodes - 1):
    contiguous ranges whose sizes differ by at most one, the base's range
    on node 0, so that a read walking down the chain changes node at most
    @nodes - 1 times and every node holds as many layers as it can"""
    if nodes < 1:
        raise ValueError('cannot split layers over %d nodes' % nodes)
    if layers < 0:
        raise ValueError('cannot split %d layers' % layers)
    per_node, extra = divmod(layers, nodes)
    where = {}
    layer = 1
    for node in range(nodes):
        for _ in range(per_node + (1 if node < extra else 0)):
            where[layer] = node
            layer += 1
    return where


def parse_rate(text):
    """Bytes per second of a --bandwidth given in bits per second, with an
    optional decimal suffix k, M or G (1G = 10^9 bit/s = 125 MB/s), as
    network links are rated; an argparse error otherwise"""
    m = re.fullmatch(r'(\d+(?:\.\d+)?)([kKmMgG]?)', text.strip())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            'bad bandwidth %r (bits per second, e.g. 100M, 1G, 2.5G)' % text)
    scale = {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9}[m.group(2).lower()]
    return float(m.group(1)) * scale / 8


def parse_latency(text):
    """Milliseconds of a --latency (the round trip added), >= 0"""
    try:
        ms = float(text)
    except ValueError:
        ms = -1
    if not ms >= 0 or ms > 60000:
        raise argparse.ArgumentTypeError(
            'bad latency %r (milliseconds of round trip, e.g. 0.5)' % text)
    return ms


def namespace_name(pid, node, proxy=False):
    return '%s%d-%d%s' % (PREFIX, pid, node, 'p' if proxy else '')


def parse_namespace_name(name):
    """(pid, node, proxy?) of a namespace this module names; None for any
    other name"""
    m = re.fullmatch(re.escape(PREFIX) + r'(\d+)-(\d+)(p?)', name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3) == 'p'


def veth_name(pid, node, proxy=False):
    """The host end of a node's (or its proxy's) veth pair"""
    return '%s%d-%d%s' % (VETH_PREFIX, pid, node, 'p' if proxy else '')


def networks_in_use(addr_text, route_text):
    """The IPv4 networks of `ip -4 -o addr show` and `ip -4 route show
    table all` output (the default route aside)"""
    nets = []
    for line in addr_text.splitlines():
        words = line.split()
        if 'inet' in words and words.index('inet') + 1 < len(words):
            nets.append(words[words.index('inet') + 1])
    kinds = ('unicast', 'local', 'broadcast', 'multicast', 'anycast',
             'blackhole', 'unreachable', 'prohibit', 'throw', 'nat')
    for line in route_text.splitlines():
        words = line.split()
        if words and words[0] in kinds:
            words = words[1:]
        if words and words[0] != 'default':
            nets.append(words[0])
    found = []
    for net in nets:
        try:
            found.append(ipaddress.ip_network(net, strict=False))
        except ValueError:
            pass
    return [net for net in found if net.version == 4]


def free_subnets(in_use, count):
    """The first @count third octets X such that 10.237.X.0/24 overlaps
    none of the networks @in_use"""
    found = []
    for x in range(1, 255):
        candidate = ipaddress.ip_network('%s.%d.0/24' % (
            '.'.join(str(SUBNETS.network_address).split('.')[:2]), x))
        if not any(candidate.overlaps(net) for net in in_use):
            found.append(x)
            if len(found) == count:
                return found
    raise NodesError('only %d free /24 subnets in %s for %d nodes (the '
                     'host uses the others)' % (len(found), SUBNETS, count))


def subnet_addresses(x):
    """The addresses of the node using 10.237.@x.0/24, as (address,
    prefix length) where it matters"""
    base = '.'.join(str(SUBNETS.network_address).split('.')[:2]) + '.%d.' % x
    return {'host': base + '1', 'node': base + '2',
            'proxy_host': base + '5', 'proxy': base + '6',
            'proxy_link': base + '9', 'node_link': base + '10',
            'prefix': 30}


def parse_rpcinfo(text):
    """The registrations {(program, version, proto, port)} in the output
    of `rpcinfo -p`"""
    found = set()
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 4 and all(w.isdigit() for w in
                                   (words[0], words[1], words[3])):
            found.add((int(words[0]), int(words[1]), words[2],
                       int(words[3])))
    return found


def check_directory(path):
    """ganesha's configuration quotes the path, and the run's environment
    lists directories separated by spaces: refuse what either would break"""
    if re.search(r'[\s"\\;#{}]', path):
        raise NodesError('cannot export %r: its path has whitespace, '
                         'quotes or characters of ganesha\'s configuration '
                         'syntax' % path)


def ganesha_config(directory, export, recovery):
    """ganesha's configuration for a node serving @directory as @export,
    its NFSv4 recovery state in @recovery"""
    return '''# sqemu nfs-nodes: one node, one export
NFS_CORE_PARAM {
    # fixed ports, which the latency proxy forwards
    NFS_Port = %(nfs)d;
    MNT_Port = %(mountd)d;
    NLM_Port = 32803;
    Rquota_Port = 875;
    # no rpc.statd in the node, and QEMU's libnfs takes no locks
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Protocols = 3, 4;
    # NFSv3 mounts name the export by its short path, as v4 does
    Mount_Path_Pseudo = true;
}
NFSV4 {
    RecoveryBackend = fs;
    RecoveryRoot = "%(recovery)s";
    # a fresh server has nothing to recover: no 90 s grace period
    Graceless = true;
}
NFS_KRB5 {
    Active_krb5 = false;
}
EXPORT {
    Export_Id = 1;
    Path = "%(directory)s";
    Pseudo = "%(export)s";
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3, 4;
    Transports = TCP, UDP;
    SecType = sys;
    # images are made in the directory by local tools too: no stale
    # attributes (sizes) cached across that
    Attr_Expiration_Time = 0;
    FSAL {
        Name = VFS;
    }
}
LOG {
    Default_Log_Level = EVENT;
}
''' % {'nfs': NFS_PORT, 'mountd': MOUNTD_PORT, 'recovery': recovery,
       'directory': directory, 'export': export}


def url(address, export, relative=''):
    """nfs://@address@export/@relative: QEMU's nfs driver mounts the URL's
    directory part, so @relative must name a file directly in the export"""
    return 'nfs://%s%s/%s' % (address, export, relative.lstrip('/'))


# The latency proxy

# What one recv() forwards at most, and how many bytes a direction of a
# connection holds before it stops reading (16 MiB in flight)
CHUNK = 256 << 10
QUEUE_BYTES = 64 * CHUNK

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1


class Timespec(ctypes.Structure):
    _fields_ = [('tv_sec', ctypes.c_long), ('tv_nsec', ctypes.c_long)]


class Itimerspec(ctypes.Structure):
    _fields_ = [('it_interval', Timespec), ('it_value', Timespec)]


class Timer:
    """A timerfd on CLOCK_MONOTONIC (time.monotonic()'s clock), which an
    epoll loop waits for with nanosecond resolution: Python 3.11's
    epoll.poll() and poll() round their timeouts up to whole
    milliseconds, twice a 0.5 ms round trip"""

    def __init__(self):
        self.fd = proc.LIBC.timerfd_create(CLOCK_MONOTONIC,
                                           TFD_NONBLOCK | TFD_CLOEXEC)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, 'timerfd_create: %s' % os.strerror(err))
        self.armed = None

    def arm(self, when):
        """Fire at monotonic time @when (seconds); None disarms"""
        if when == self.armed:
            return
        spec = Itimerspec()
        if when is not None:
            ns = max(1, int(when * 1e9))
            spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(ns, 10 ** 9)
        if proc.LIBC.timerfd_settime(self.fd, TFD_TIMER_ABSTIME,
                                     ctypes.byref(spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, 'timerfd_settime: %s' % os.strerror(err))
        self.armed = when

    def clear(self):
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        self.armed = None

    def close(self):
        os.close(self.fd)


CLONE_NEWNET = 0x40000000
NETNS_DIR = '/run/netns'


def set_net_namespace(fd, name):
    if proc.LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'setns to %s: %s' % (name, os.strerror(err)))


class NetNamespace:
    """A network namespace (named as by `ip netns`) whose sockets a
    process in another makes: a socket belongs for its whole life to the
    namespace its thread was in when it was made, so make() enters the
    namespace around it and comes back (which needs CAP_SYS_ADMIN)"""

    def __init__(self, name):
        self.name = name
        self.fd = os.open(os.path.join(NETNS_DIR, name),
                          os.O_RDONLY | os.O_CLOEXEC)
        self.home = os.open('/proc/thread-self/ns/net',
                            os.O_RDONLY | os.O_CLOEXEC)

    def make(self, factory, *args, **kwargs):
        """factory(*args, **kwargs) run in the namespace"""
        set_net_namespace(self.fd, self.name)
        try:
            return factory(*args, **kwargs)
        finally:
            # staying in the wrong namespace would connect the next node's
            # clients elsewhere: an error here ends the proxy
            set_net_namespace(self.home, 'our own namespace')

    def close(self):
        os.close(self.fd)
        os.close(self.home)


def in_namespace(namespace, factory, *args, **kwargs):
    """factory(*args, **kwargs) in @namespace (a NetNamespace), or in ours
    if it is None"""
    if namespace is None:
        return factory(*args, **kwargs)
    return namespace.make(factory, *args, **kwargs)


class Link:
    """One direction of a node's network link, shared by all its
    connections: the time at which a chunk read at some moment arrives at
    the other end"""

    def __init__(self, delay, rate=None):
        self.delay = delay          # seconds, one way
        self.rate = rate            # bytes per second, or None: unlimited
        self.free = 0.0             # when the link has sent what it has

    def arrival(self, now, size):
        if not self.rate:
            return now + self.delay
        self.free = max(now, self.free) + size / self.rate
        return self.free + self.delay


class Direction:
    """One direction of a proxied connection: what is read from @src is
    stamped with its arrival time on @link and sent to @dst when due, in
    order, without holding back reading (the throughput of a long link is
    its bandwidth, not one chunk per round trip)"""

    def __init__(self, conn, src, dst, link):
        self.conn, self.src, self.dst, self.link = conn, src, dst, link
        self.chunks = collections.deque()   # (due, data), not due yet
        self.queued = 0                      # bytes in chunks and out
        self.out = b''                       # due, not sent yet
        self.eof = False                     # src has ended
        self.done = False                    # dst has been shut for writes


class Connection:
    """A client's connection and the proxy's connection to the node, a
    Direction each way; either direction's failure (a reset) ends both"""

    def __init__(self, client, upstream, links):
        self.sockets = (client, upstream)
        self.directions = (Direction(self, client, upstream, links[0]),
                           Direction(self, upstream, client, links[1]))
        self.connected = False      # the connect to the node has completed
        self.closed = False


class Proxy:
    """Forwards TCP connections in one thread: an epoll loop, the chunks
    in flight on a heap of due times and a timerfd for the next one.  It
    used to take four threads per connection, which handed every chunk
    over through a queue: on a 2-CPU machine the proxies then took CPU
    from what they carry traffic for."""

    def __init__(self, overshoot=0.0):
        self.overshoot = overshoot  # how late the timer wakes us, taken off
        self.epoll = select.epoll()
        self.timer = Timer()
        self.epoll.register(self.timer.fd, select.EPOLLIN)
        # fd -> (listener, target, port, links, namespace)
        self.listeners = {}
        self.sockets = {}           # fd -> (socket, Connection)
        # fd -> registered event mask; 0: not registered, because epoll
        # reports a hangup whatever the mask, and a socket that has ended
        # both ways would wake the loop for ever
        self.masks = {}
        self.due = []               # heap of (due, sequence, Direction)
        self.sequence = 0

    def listen(self, listener, target, port, links, namespace=None):
        """Forward what connects to @listener to @target:@port over
        @links (a Link each way, shared by the connections of every
        listener given the same); the connections to @target are made in
        @namespace (a NetNamespace) if given, else in ours"""
        listener.setblocking(False)
        self.listeners[listener.fileno()] = (listener, target, port, links,
                                             namespace)
        self.epoll.register(listener.fileno(), select.EPOLLIN)

    def accept(self, fd):
        listener, target, port, links, namespace = self.listeners[fd]
        try:
            client, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        # the connect to the node completes in the loop (EPOLLOUT), so
        # that a node slow to answer holds up no other connection
        upstream = in_namespace(namespace, socket.socket, socket.AF_INET,
                                socket.SOCK_STREAM)
        upstream.setblocking(False)
        err = upstream.connect_ex((target, port))
        if err not in (0, errno.EINPROGRESS):
            upstream.close()
            client.close()
            return
        conn = Connection(client, upstream, links)
        for sock in conn.sockets:
            sock.setblocking(False)
            # RPCs are small: Nagle's algorithm would add its own delay
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets[sock.fileno()] = (sock, conn)
            self.masks[sock.fileno()] = 0
        self.set_mask(client, select.EPOLLIN)
        self.set_mask(upstream, select.EPOLLOUT)

    def set_mask(self, sock, mask):
        fd = sock.fileno()
        old = self.masks[fd]
        if mask == old:
            return
        if not old:
            self.epoll.register(fd, mask)
        elif not mask:
            self.epoll.unregister(fd)
        else:
            self.epoll.modify(fd, mask)
        self.masks[fd] = mask

    def connected(self, sock, conn):
        """The connect of @conn's @sock to the node has completed"""
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.abort(conn)
            return
        conn.connected = True
        for d in conn.directions:
            self.flush(d)
        if not conn.closed:
            for s in conn.sockets:
                self.update(s)

    def update(self, sock):
        """Register for @sock what its directions wait for: reading while
        the one it feeds has room, writing while the one it is fed by has
        due bytes it could not send"""
        fd = sock.fileno()
        if fd not in self.masks:
            return
        _, conn = self.sockets[fd]
        if not conn.connected and sock is conn.sockets[1]:
            return                  # waits for its connect (EPOLLOUT)
        mask = 0
        for d in conn.directions:
            if d.src is sock and not d.eof and d.queued < QUEUE_BYTES:
                mask |= select.EPOLLIN
            if d.dst is sock and d.out:
                mask |= select.EPOLLOUT
        self.set_mask(sock, mask)

    def abort(self, conn):
        if conn.closed:
            return
        conn.closed = True
        for sock in conn.sockets:
            fd = sock.fileno()
            if self.masks.pop(fd, 0):
                self.epoll.unregister(fd)
            self.sockets.pop(fd, None)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def finish(self, conn):
        """Close @conn once both directions have ended"""
        if all(d.done for d in conn.directions):
            self.abort(conn)

    def read(self, sock, conn):
        for d in conn.directions:
            if d.src is sock:
                break
        try:
            data = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort(conn)
            return
        if not data:
            d.eof = True
            self.flush(d)
        else:
            due = d.link.arrival(time.monotonic(), len(data))
            d.chunks.append((due, data))
            d.queued += len(data)
            self.sequence += 1
            heapq.heappush(self.due, (due, self.sequence, d))
        if not conn.closed:
            self.update(sock)

    def release(self, d, now):
        """Move @d's chunks that are due at @now to its output"""
        parts = [d.out] if d.out else []
        while d.chunks and d.chunks[0][0] - self.overshoot <= now:
            parts.append(d.chunks.popleft()[1])
        if parts:
            d.out = b''.join(parts)
            self.flush(d)

    def flush(self, d):
        """Send what @d has due; shut @d.dst for writes after an EOF"""
        conn = d.conn
        if conn.closed or not conn.connected:
            return
        if d.out:
            try:
                sent = d.dst.send(d.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.abort(conn)
                return
            d.out = memoryview(d.out)[sent:] if sent < len(d.out) else b''
            d.queued -= sent
            self.update(d.src)
            self.update(d.dst)
        if d.eof and not d.out and not d.chunks and not d.done:
            d.done = True
            try:
                d.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.finish(conn)

    def fire(self):
        now = time.monotonic()
        while self.due and self.due[0][0] - self.overshoot <= now:
            _, _, d = heapq.heappop(self.due)
            if not d.conn.closed:
                self.release(d, now)
        self.timer.arm(self.due[0][0] - self.overshoot if self.due
                       else None)

    def run(self):
        while True:
            for fd, events in self.epoll.poll():
                if fd == self.timer.fd:
                    self.timer.clear()
                elif fd in self.listeners:
                    self.accept(fd)
                elif fd in self.sockets:
                    sock, conn = self.sockets[fd]
                    if not conn.connected and sock is conn.sockets[1]:
                        self.connected(sock, conn)
                        continue
                    if events & (select.EPOLLIN | select.EPOLLHUP |
                                 select.EPOLLERR):
                        self.read(sock, conn)
                    if events & select.EPOLLOUT and not conn.closed:
                        for d in conn.directions:
                            if d.dst is sock:
                                self.flush(d)
            self.fire()


def timer_overshoot(samples=50, pause=0.0002):
    """How much later than asked the proxy's timer wakes it here (the
    median of @samples waits of @pause), which the proxy takes off its
    waits"""
    timer, epoll, late = Timer(), select.epoll(), []
    epoll.register(timer.fd, select.EPOLLIN)
    try:
        for _ in range(samples):
            start = time.monotonic()
            timer.arm(start + pause)
            epoll.poll()
            timer.clear()
            late.append(time.monotonic() - start - pause)
    finally:
        epoll.close()
        timer.close()
    return max(0.0, sorted(late)[samples // 2])


def parse_route(text):
    """NAMESPACE,LISTEN,CONNECT (NAMESPACE may be empty: ours)"""
    parts = text.split(',')
    if len(parts) != 3 or not all(parts[1:]):
        raise argparse.ArgumentTypeError(
            'a route is NAMESPACE,LISTEN,CONNECT, not %r' % text)
    return parts


def cmd_proxy(args):
    """Forward @args.ports of each route's LISTEN address to its CONNECT
    address until killed, over a link of the route's own; prints
    'listening' once every port is bound"""
    # Stop with whoever started us, even if it is SIGKILLed
    proc.LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if args.parent and os.getppid() != args.parent:
        return 1

    def stop(signum, frame):
        raise SystemExit(0)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    delay = args.latency / 2000
    proxy = Proxy(timer_overshoot() if delay else 0.0)
    for name, listen, connect in args.routes:
        namespace = NetNamespace(name) if name else None
        links = (Link(delay, args.bandwidth), Link(delay, args.bandwidth))
        for port in args.ports:
            listener = in_namespace(namespace, socket.create_server,
                                    (listen, port), backlog=128)
            proxy.listen(listener, connect, port, links, namespace)
    print('listening', flush=True)
    proxy.run()
    return 0


# The machine: namespaces, veths, processes

def which(tool):
    return shutil.which(tool, path=os.environ.get('PATH', '') + ':' +
                        SBIN_PATH)


def ip(*args, check=True):
    """Run `ip @args`; its output; NodesError naming the command if it
    fails and @check"""
    res = subprocess.run(['ip', *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    if check and res.returncode != 0:
        raise NodesError('ip %s failed: %s' %
                         (' '.join(args), util.tail(res.stdout)))
    return res.stdout


def namespaces():
    """The names of the network namespaces (`ip netns list`)"""
    return [line.split()[0] for line in ip('netns', 'list').splitlines()
            if line.strip()]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def kill_namespace(name):
    """SIGKILL what runs in namespace @name (ganesha, rpcbind, a proxy:
    all ours), wait for it to go, delete the namespace"""
    deadline = time.monotonic() + STOP_TIMEOUT
    while True:
        pids = [int(p) for p in ip('netns', 'pids', name,
                                   check=False).split() if p.isdigit()]
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    ip('netns', 'delete', name, check=False)


class AddressLock:
    """The machine-wide lock under which a run picks its subnets and puts
    them on its veths"""

    def __init__(self, timeout=60):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.bind(ADDRESS_LOCK)
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise NodesError('another nfs-nodes run held the '
                                     'address lock for %d s' % timeout)
                time.sleep(0.05)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()


def set_pdeathsig():
    """In a child before exec: SIGTERM when we die, so that a run killed
    with SIGKILL does not leave a node serving ('cleanup' gets the rest)"""
    proc.LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def read_tail(*logs, lines=5):
    """The last @lines lines of each of @logs that has any, on one line"""
    found = []
    for path in logs:
        try:
            with open(path, errors='replace') as f:
                text = util.tail(f.read(), lines)
        except OSError:
            continue
        if text:
            found.append('%s: %s' % (os.path.basename(path), text))
    return '; '.join(found) or '(nothing in %s)' % ', '.join(logs)


class Node:
    """One NFS storage node: clients use nfs://address/export/FILE for the
    file FILE of directory (the host directory it serves)"""

    def __init__(self, index, pid, directory, x, state, proxied):
        self.index = index
        self.directory = directory
        self.export = '/node%d' % index
        self.namespace = namespace_name(pid, index)
        self.proxy_namespace = (namespace_name(pid, index, True)
                                if proxied else None)
        self.veth = veth_name(pid, index)
        self.proxy_veth = veth_name(pid, index, True) if proxied else None
        self.addresses = subnet_addresses(x)
        # the node itself, without the proxy
        self.direct_address = self.addresses['node']
        self.address = (self.addresses['proxy'] if proxied
                        else self.direct_address)
        self.state = state
        self.rpcbind = self.ganesha = None

    def url(self, relative=''):
        return url(self.address, self.export, relative)

    def path(self, name):
        """The file @name in the node's part of the state directory"""
        return os.path.join(self.state, name)

    def describe(self):
        line = 'node %d address %s export %s directory %s' % (
            self.index, self.address, self.export, self.directory)
        if self.proxy_namespace:
            line += ' direct %s' % self.direct_address
        return line


class Nodes:
    """@count NFS storage nodes serving @directory/node<i>, behind a proxy
    adding @latency_ms of round trip and capping each direction at
    @bandwidth bytes per second if either is given.  Started on entering
    a with block (or by start()), stopped and removed on leaving it (or by
    stop()); nodes[i] is node i."""

    def __init__(self, count, directory, latency_ms=None, bandwidth=None,
                 log=None):
        if count < 1:
            raise NodesError('need at least one node, not %d' % count)
        self.count = count
        self.directory = os.path.abspath(directory)
        self.latency_ms = latency_ms
        self.bandwidth = bandwidth
        self.proxied = latency_ms is not None or bandwidth is not None
        self.log = log or (lambda msg: None)
        self.nodes = []
        self.made = []          # namespaces and links made, to remove
        self.state = None
        self.proxy = None       # the proxy's process, if proxied
        self.pid = os.getpid()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def __getitem__(self, i):
        return self.nodes[i]

    def __len__(self):
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    def url(self, i, relative=''):
        return self.nodes[i].url(relative)

    def environment(self):
        """The variables that name the nodes for a command ('run'):
        addresses, exports, URL prefixes, directories, each a
        space-separated list in node order"""
        return {
            'SQEMU_NFS_NODES': ' '.join(n.address for n in self),
            'SQEMU_NFS_DIRECT': ' '.join(n.direct_address for n in self),
            'SQEMU_NFS_EXPORTS': ' '.join(n.export for n in self),
            'SQEMU_NFS_URLS': ' '.join(n.url() for n in self),
            'SQEMU_NFS_DIRS': ' '.join(n.directory for n in self),
        }

    def check_machine(self):
        if os.geteuid() != 0:
            raise CannotRun('network namespaces need root (CAP_SYS_ADMIN, '
                            'CAP_NET_ADMIN); running as uid %d' %
                            os.geteuid())
        missing = ['%s (%s)' % (tool, package)
                   for tool, package in TOOLS.items() if not which(tool)]
        if not glob.glob('/usr/lib/*/ganesha/libfsalvfs.so'):
            missing.append('ganesha\'s VFS FSAL (nfs-ganesha-vfs)')
        if missing:
            raise CannotRun('missing %s; scripts/sqemu/install-deps nfs '
                            'installs them' % ', '.join(missing))

    def start(self):
        try:
            self.check_machine()
            check_directory(self.directory)
            self.state = tempfile.mkdtemp(prefix='%s%d-' %
                                          (PREFIX, self.pid))
            self.make_network()
            for node in self.nodes:
                self.start_node(node)
            self.start_proxy()
        except BaseException:
            self.stop()
            raise

    def make_network(self):
        with AddressLock():
            xs = free_subnets(networks_in_use(
                ip('-4', '-o', 'addr', 'show'),
                ip('-4', 'route', 'show', 'table', 'all')), self.count)
            for i, x in enumerate(xs):
                directory = os.path.join(self.directory, 'node%d' % i)
                state = os.path.join(self.state, 'node%d' % i)
                os.makedirs(directory, exist_ok=True)
                os.makedirs(os.path.join(state, 'recovery'))
                node = Node(i, self.pid, directory, x, state, self.proxied)
                self.nodes.append(node)
                self.make_links(node)

    def add_namespace(self, name):
        res = subprocess.run(['ip', 'netns', 'add', name],
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0:
            raise CannotRun('cannot create network namespace %s: %s' %
                            (name, util.tail(res.stdout)))
        self.made.append(name)
        ip('-n', name, 'link', 'set', 'lo', 'up')

    def make_links(self, node):
        a = node.addresses
        prefix = '/%d' % a['prefix']
        self.add_namespace(node.namespace)
        ip('link', 'add', node.veth, 'type', 'veth', 'peer', 'name', 'host0',
           'netns', node.namespace)
        ip('addr', 'add', a['host'] + prefix, 'dev', node.veth)
        ip('link', 'set', node.veth, 'up')
        ip('-n', node.namespace, 'addr', 'add', a['node'] + prefix, 'dev',
           'host0')
        ip('-n', node.namespace, 'link', 'set', 'host0', 'up')
        if not node.proxy_namespace:
            return
        # the proxy: reached from the host, reaching the node over a link
        # of its own (no forwarding through the host)
        self.add_namespace(node.proxy_namespace)
        ip('link', 'add', node.proxy_veth, 'type', 'veth', 'peer', 'name',
           'host0', 'netns', node.proxy_namespace)
        ip('addr', 'add', a['proxy_host'] + prefix, 'dev', node.proxy_veth)
        ip('link', 'set', node.proxy_veth, 'up')
        ip('-n', node.proxy_namespace, 'addr', 'add', a['proxy'] + prefix,
           'dev', 'host0')
        ip('-n', node.proxy_namespace, 'link', 'set', 'host0', 'up')
        ip('link', 'add', 'node0', 'netns', node.proxy_namespace, 'type',
           'veth', 'peer', 'name', 'proxy0', 'netns', node.namespace)
        ip('-n', node.proxy_namespace, 'addr', 'add',
           a['proxy_link'] + prefix, 'dev', 'node0')
        ip('-n', node.proxy_namespace, 'link', 'set', 'node0', 'up')
        ip('-n', node.namespace, 'addr', 'add', a['node_link'] + prefix,
           'dev', 'proxy0')
        ip('-n', node.namespace, 'link', 'set', 'proxy0', 'up')

    def spawn(self, cmd, log):
        with open(log, 'w') as out:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True,
                                    preexec_fn=set_pdeathsig)

    def start_node(self, node):
        self.log('starting node %d (%s)' % (node.index, node.namespace))
        # rpcbind listens on /run/rpcbind.sock: a /run of the node's own
        # in a mount namespace of its own, which ganesha enters below
        node.rpcbind = self.spawn(
            ['ip', 'netns', 'exec', node.namespace,
             'unshare', '--mount', '--propagation', 'private',
             'sh', '-c', 'mount -t tmpfs -o mode=0755,size=16m '
             'sqemu-nfs-run /run && exec "$0" -f', which('rpcbind')],
            node.path('rpcbind.log'))
        self.wait_port(node, node.rpcbind, 'rpcbind', node.direct_address,
                       RPCBIND_PORT, (node.path('rpcbind.log'),))
        with open(node.path('ganesha.conf'), 'w') as f:
            f.write(ganesha_config(node.directory, node.export,
                                   node.path('recovery')))
        self.start_ganesha(node)

    def start_proxy(self):
        """One proxy process for all the nodes, a link each: one epoll
        loop wakes once for what several nodes send at a time, where a
        process per node woke once per node (on 2 CPUs, random reads over
        two nodes then paid some 10 us more per read in the proxies than
        over one).  It runs in node 0's proxy namespace, where cleanup
        finds it, and makes the other nodes' sockets in theirs."""
        if not self.proxied:
            return
        cmd = ['ip', 'netns', 'exec', self.nodes[0].proxy_namespace,
               paths.script('nfs-nodes'), 'proxy',
               '--parent', str(os.getpid()),
               '--ports', ','.join(str(p) for p in PORTS),
               '--latency', str(self.latency_ms or 0)]
        for node in self.nodes:
            cmd += ['--route', '%s,%s,%s' % (node.proxy_namespace,
                                             node.address,
                                             node.addresses['node_link'])]
        if self.bandwidth:
            cmd += ['--bandwidth-bytes', str(self.bandwidth)]
        log = os.path.join(self.state, 'proxy.log')
        self.log('starting the proxy')
        self.proxy = self.spawn(cmd, log)
        for node in self.nodes:
            self.wait_registered(node, node.address, 'the proxy',
                                 self.proxy, (log,))

    def start_ganesha(self, node):
        # --root and --wd: entering a mount namespace resets the root and
        # the working directory to the namespace's, which in a chroot is
        # not the one rpcbind (and this script) sees
        node.ganesha = self.spawn(
            ['nsenter', '--target', str(node.rpcbind.pid), '--mount',
             '--net', '--root', '--wd', which('ganesha.nfsd'),
             '-F', '-f', node.path('ganesha.conf'),
             '-L', node.path('ganesha.log'), '-p', node.path('ganesha.pid'),
             '-N', 'NIV_EVENT'], node.path('ganesha.out'))
        self.wait_registered(node, node.direct_address, 'ganesha.nfsd',
                             node.ganesha, (node.path('ganesha.out'),
                                            node.path('ganesha.log')))

    def stop_server(self, i, crash=True):
        """Stop node @i's NFS server (rpcbind and the proxy stay): killed
        (@crash, as a crashed or rebooted server leaves its clients) or
        shut down with SIGTERM"""
        node = self.nodes[i]
        self.log('%s the NFS server of node %d' %
                 ('killing' if crash else 'stopping', i))
        if crash:
            node.ganesha.kill()
            node.ganesha.wait()
        else:
            stop_process(node.ganesha)

    def start_server(self, i):
        """Start node @i's NFS server again (after stop_server), serving
        the same directory at the same address and ports"""
        node = self.nodes[i]
        self.log('starting the NFS server of node %d again' % i)
        self.start_ganesha(node)
        # a killed server's registrations stay with rpcbind: wait for the
        # ports themselves
        for port in (NFS_PORT, MOUNTD_PORT):
            self.wait_port(node, node.ganesha, 'ganesha.nfsd',
                           node.direct_address, port,
                           (node.path('ganesha.out'),
                            node.path('ganesha.log')))

    def wait_port(self, node, process, name, address, port, logs):
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise NodesError('%s for node %d exited (%s): %s' % (
                    name, node.index, util.describe_status(
                        process.returncode), read_tail(*logs)))
            try:
                socket.create_connection((address, port), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise NodesError('%s for node %d did not listen on %s:%d '
                                 'within %d s: %s' % (
                                     name, node.index, address, port,
                                     STARTUP_TIMEOUT, read_tail(*logs)))
            time.sleep(0.05)

    def wait_registered(self, node, address, name, process, logs):
        """Wait until rpcbind at @address lists ganesha's nfsd and mountd
        (through the proxy, the proxy's whole path: the portmapper over
        TCP)"""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise NodesError('%s for node %d exited (%s): %s' % (
                    name, node.index,
                    util.describe_status(process.returncode),
                    read_tail(*logs)))
            try:
                res = subprocess.run([which('rpcinfo'), '-p', address],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     timeout=5)
                if REGISTRATIONS <= parse_rpcinfo(res.stdout):
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise NodesError('%s for node %d did not register with '
                                 'rpcbind at %s within %d s: %s' % (
                                     name, node.index, address,
                                     STARTUP_TIMEOUT, read_tail(*logs)))
            time.sleep(0.1)

    def dead(self):
        """A line for each process of the nodes that has exited"""
        lines = []
        for node in self.nodes:
            for name, process, logs in (
                    ('rpcbind', node.rpcbind, ('rpcbind.log',)),
                    ('ganesha.nfsd', node.ganesha,
                     ('ganesha.out', 'ganesha.log'))):
                if process and process.poll() is not None:
                    lines.append('%s for node %d exited (%s): %s' % (
                        name, node.index,
                        util.describe_status(process.returncode),
                        read_tail(*map(node.path, logs))))
        if self.proxy and self.proxy.poll() is not None:
            lines.append('the proxy exited (%s): %s' % (
                util.describe_status(self.proxy.returncode),
                read_tail(os.path.join(self.state, 'proxy.log'))))
        return lines

    def stop(self):
        """Stop every process, delete the namespaces (their veths go with
        them) and the state directory.  Signals wait until it is done:
        half a cleanup would leave a node serving."""
        signums = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
        try:
            stop_process(self.proxy)
            self.proxy = None
            for node in reversed(self.nodes):
                for process in (node.ganesha, node.rpcbind):
                    stop_process(process)
            for name in reversed(self.made):
                kill_namespace(name)
            for node in self.nodes:
                for veth in (node.veth, node.proxy_veth):
                    if veth and os.path.exists('/sys/class/net/' + veth):
                        ip('link', 'delete', veth, check=False)
            self.made = []
            self.nodes = []
            if self.state:
                shutil.rmtree(self.state, ignore_errors=True)
                self.state = None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_process(process):
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cleanup(log=print):
    """Remove what runs that died left: their namespaces (and what still
    runs in them), veths and state directories; the number of things
    removed"""
    removed = 0
    for name in namespaces():
        parsed = parse_namespace_name(name)
        if parsed and not pid_alive(parsed[0]):
            log('removing namespace %s' % name)
            kill_namespace(name)
            removed += 1
    for line in ip('-o', 'link', 'show').splitlines():
        words = line.split()
        if len(words) < 2:
            continue
        veth = words[1].rstrip(':').split('@')[0]
        m = re.fullmatch(VETH_PREFIX + r'(\d+)-\d+p?', veth)
        if m and not pid_alive(int(m.group(1))):
            log('removing link %s' % veth)
            ip('link', 'delete', veth, check=False)
            removed += 1
    for path in glob.glob(os.path.join(tempfile.gettempdir(),
                                       PREFIX + '*-*')):
        m = re.fullmatch(re.escape(PREFIX) + r'(\d+)-.*',
                         os.path.basename(path))
        if m and os.path.isdir(path) and not pid_alive(int(m.group(1))):
            log('removing state directory %s' % path)
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


# The command

class Stopped(Exception):
    def __init__(self, signum):
        super().__init__('stopped by signal %d' % signum)
        self.signum = signum


def raise_stopped(signum, _frame):
    raise Stopped(signum)


def log(msg):
    print('nfs-nodes: %s' % msg, file=sys.stderr, flush=True)


def cmd_start(args):
    nodes = Nodes(args.nodes, args.dir, args.latency, args.bandwidth,
                  log=log)
    ready = False
    try:
        with nodes:
            for node in nodes:
                print(node.describe())
            print('ready', flush=True)
            ready = True
            while True:
                dead = nodes.dead()
                if dead:
                    raise NodesError('; '.join(dead))
                time.sleep(1)
    except Stopped as e:
        return 0 if ready else 128 + e.signum


def cmd_run(args):
    cmd = args.cmd[1:] if args.cmd[:1] == ['--'] else args.cmd
    if not cmd:
        raise NodesError('run needs a command after --')
    try:
        with Nodes(args.nodes, args.dir, args.latency, args.bandwidth,
                   log=log) as n:
            child = subprocess.Popen(cmd, env=dict(os.environ,
                                                   **n.environment()))
            try:
                code = child.wait()
            except Stopped:
                child.terminate()
                child.wait()
                raise
    except Stopped as e:
        return 128 + e.signum
    return code if code >= 0 else 128 - code


def cmd_cleanup(args):
    if os.geteuid() != 0:
        raise CannotRun('cleanup needs root to delete namespaces')
    removed = cleanup()
    print('removed %d leftovers of dead runs' % removed)
    return 0


def add_node_options(parser):
    parser.add_argument('-n', '--nodes', type=int, default=1,
                        help='number of nodes (default 1)')
    parser.add_argument('--dir', required=True,
                        help='node i serves DIR/node<i> (made if missing, '
                             'kept when the nodes stop)')
    parser.add_argument('--latency', type=parse_latency, metavar='MS',
                        help='reach the nodes through a proxy adding MS '
                             'milliseconds of round trip (e.g. 0.5)')
    parser.add_argument('--bandwidth', type=parse_rate, metavar='RATE',
                        help='reach the nodes through a proxy carrying at '
                             'most RATE bits per second in each direction '
                             'per node (k, M, G: powers of 10; e.g. 1G)')


def main():
    parser = argparse.ArgumentParser(
        description='NFS storage nodes on this machine: per node a network '
                    'namespace with rpcbind and nfs-ganesha exporting a '
                    'directory over NFSv3/v4, optionally behind a proxy '
                    'that adds latency and caps bandwidth.',
        epilog='Needs root and the packages of install-deps nfs; exits '
               'with status %d when it cannot run here.' % EXIT_CANNOT_RUN)
    sub = parser.add_subparsers(dest='command', required=True,
                                metavar='COMMAND')
    start = sub.add_parser(
        'start', help='start the nodes and serve until stopped',
        description='Start the nodes, print "node I address ADDR export '
                    'EXPORT directory DIR" per node (use '
                    'nfs://ADDR/EXPORT/FILE) and "ready", and serve until '
                    'SIGTERM, SIGINT or SIGHUP; then stop and remove '
                    'everything started.')
    add_node_options(start)
    run = sub.add_parser(
        'run', help='start the nodes, run a command, stop them',
        description='Start the nodes, run CMD with SQEMU_NFS_NODES '
                    '(addresses), SQEMU_NFS_EXPORTS, SQEMU_NFS_URLS '
                    '(nfs://ADDR/EXPORT), SQEMU_NFS_DIRS (the directories '
                    'served) and SQEMU_NFS_DIRECT (the nodes\' addresses '
                    'without the proxy) set, each a space-separated list '
                    'in node order; stop the nodes and exit with CMD\'s '
                    'status.')
    add_node_options(run)
    run.add_argument('cmd', nargs=argparse.REMAINDER, metavar='-- CMD ARGS',
                     help='the command')
    sub.add_parser(
        'cleanup', help='remove what dead runs left',
        description='Remove the namespaces (and what runs in them), veths '
                    'and state directories of runs whose process is gone.')
    proxy = sub.add_parser(
        'proxy', help='(internal) the latency proxy of the nodes',
        description='For each route, forward TCP PORTS of LISTEN to the '
                    'same ports of CONNECT, both in network namespace '
                    'NAMESPACE (empty: ours), delaying and rate-limiting '
                    'over a link per route (see nfs_nodes.py).')
    proxy.add_argument('--route', dest='routes', action='append',
                       required=True, type=parse_route,
                       metavar='NAMESPACE,LISTEN,CONNECT')
    proxy.add_argument('--ports', required=True,
                       type=lambda s: [int(p) for p in s.split(',')])
    proxy.add_argument('--latency', type=parse_latency, default=0,
                       metavar='MS', help='round trip added')
    proxy.add_argument('--bandwidth-bytes', dest='bandwidth', type=float,
                       metavar='BYTES', help='bytes per second per direction')
    proxy.add_argument('--parent', type=int,
                       help='exit if our parent is not this pid')
    args = parser.parse_args()
    if args.command == 'proxy':
        return cmd_proxy(args)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, raise_stopped)
    try:
        return {'start': cmd_start, 'run': cmd_run,
                'cleanup': cmd_cleanup}[args.command](args) or 0
    except CannotRun as e:
        print('nfs-nodes: cannot run here: %s' % e, file=sys.stderr)
        return EXIT_CANNOT_RUN
    except NodesError as e:
        print('nfs-nodes: error: %s' % e, file=sys.stderr)
        return 1
    except Stopped as e:
        return 128 + e.signum

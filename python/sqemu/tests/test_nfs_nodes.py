# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.nfs_nodes: spreading layers over nodes, names, addresses, the
# parsing of ip and rpcinfo output, ganesha's configuration, and the
# latency proxy on loopback (no root, no namespaces needed).

import argparse
import ipaddress
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time

import pytest

from sqemu import nfs_nodes


@pytest.mark.parametrize('layers,nodes', [
    (1, 1), (10, 1), (100, 2), (101, 2), (10, 3), (7, 7), (3, 5), (0, 4),
    (500, 8)])
def test_split_layers(layers, nodes):
    where = nfs_nodes.split_layers(layers, nodes)
    assert sorted(where) == list(range(1, layers + 1))
    order = [where[layer] for layer in range(1, layers + 1)]
    # contiguous ranges, in node order, the base on node 0
    assert order == sorted(order)
    if layers:
        assert order[0] == 0
    sizes = [order.count(node) for node in range(nodes)]
    assert max(sizes) - min(sizes) <= 1
    # the larger ranges come first: no node is left empty before another
    # holds two layers
    assert sizes == sorted(sizes, reverse=True)


def test_split_layers_example():
    assert nfs_nodes.split_layers(5, 2) == {1: 0, 2: 0, 3: 0, 4: 1, 5: 1}


@pytest.mark.parametrize('layers,nodes', [(10, 0), (10, -1), (-1, 2)])
def test_split_layers_refuses(layers, nodes):
    with pytest.raises(ValueError):
        nfs_nodes.split_layers(layers, nodes)


@pytest.mark.parametrize('text,rate', [
    ('8', 1), ('1k', 125), ('100M', 12.5e6), ('1G', 125e6), ('1g', 125e6),
    ('2.5G', 312.5e6), (' 10M ', 1.25e6)])
def test_parse_rate(text, rate):
    assert nfs_nodes.parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize('text', ['', '0', '0M', '-1G', '1T', '1GB', 'G',
                                  '1 G', '1Gbit'])
def test_parse_rate_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        nfs_nodes.parse_rate(text)
    assert repr(text) in str(e.value)


@pytest.mark.parametrize('text,ms', [('0', 0), ('0.5', 0.5), ('20', 20)])
def test_parse_latency(text, ms):
    assert nfs_nodes.parse_latency(text) == ms


@pytest.mark.parametrize('text', ['', '-1', 'nan', 'x', '1ms', '1e9'])
def test_parse_latency_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        nfs_nodes.parse_latency(text)


def test_namespace_names():
    for proxy in (False, True):
        name = nfs_nodes.namespace_name(4194304, 12, proxy)
        assert name.startswith(nfs_nodes.PREFIX)
        assert nfs_nodes.parse_namespace_name(name) == (4194304, 12, proxy)
        # interface names have at most 15 characters
        assert len(nfs_nodes.veth_name(4194304, 254, proxy)) <= 15
    for other in ('sqemu-nfs', 'sqemu-nfs12', 'sqemu-nfs12-x', 'foo',
                  'sqemu-nfs12-3q', 'xsqemu-nfs12-3'):
        assert nfs_nodes.parse_namespace_name(other) is None


ADDR = '''\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever
4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid
7: sqn1-0    inet 10.237.1.1/30 scope global sqn1-0\\       valid_lft forever
'''
ROUTES = '''\
default via 192.0.2.1 dev eth0
10.237.3.0/30 dev sqn2-0 proto kernel scope link src 10.237.3.1
10.237.4.128/25 via 192.0.2.9 dev eth0
local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1
broadcast 192.0.2.255 dev eth0 table local proto kernel scope link
'''


def test_networks_in_use():
    nets = nfs_nodes.networks_in_use(ADDR, ROUTES)
    assert set(nets) == {ipaddress.ip_network(n) for n in (
        '127.0.0.0/8', '192.0.2.0/24', '10.237.1.0/30', '10.237.3.0/30',
        '10.237.4.128/25', '127.0.0.1/32', '192.0.2.255/32')}


def test_free_subnets():
    nets = nfs_nodes.networks_in_use(ADDR, ROUTES)
    assert nfs_nodes.free_subnets(nets, 3) == [2, 5, 6]
    assert nfs_nodes.free_subnets([], 2) == [1, 2]
    with pytest.raises(nfs_nodes.NodesError) as e:
        nfs_nodes.free_subnets([ipaddress.ip_network('10.0.0.0/8')], 1)
    assert 'only 0 free' in str(e.value)
    with pytest.raises(nfs_nodes.NodesError):
        nfs_nodes.free_subnets(nets, 252)


def test_subnet_addresses():
    a = nfs_nodes.subnet_addresses(7)
    prefix = a['prefix']
    links = [('host', 'node'), ('proxy_host', 'proxy'),
             ('proxy_link', 'node_link')]
    networks = []
    for one, other in links:
        net = ipaddress.ip_interface('%s/%d' % (a[one], prefix)).network
        # both ends of a link in its subnet, neither its network nor its
        # broadcast address
        assert ipaddress.ip_address(a[other]) in net
        assert a[one] != a[other]
        for end in (a[one], a[other]):
            assert ipaddress.ip_address(end) not in (net.network_address,
                                                     net.broadcast_address)
        assert net.subnet_of(ipaddress.ip_network('10.237.7.0/24'))
        networks.append(net)
    assert len(set(networks)) == 3
    assert not any(x.overlaps(y) for x in networks for y in networks
                   if x != y)


RPCINFO = '''\
   program vers proto   port  service
    100000    4   tcp    111  portmapper
    100003    3   tcp   2049  nfs
    100005    3   udp  20048  mountd
    100005    3   tcp  20048  mountd
'''


def test_parse_rpcinfo():
    found = nfs_nodes.parse_rpcinfo(RPCINFO)
    assert (100000, 4, 'tcp', 111) in found and len(found) == 4
    assert nfs_nodes.REGISTRATIONS <= found
    assert not nfs_nodes.REGISTRATIONS <= nfs_nodes.parse_rpcinfo(
        RPCINFO.replace('tcp   2049', 'udp   2049'))
    assert nfs_nodes.parse_rpcinfo('rpcinfo: can\'t contact portmapper') \
        == set()


def test_check_directory():
    nfs_nodes.check_directory('/srv/nfs/run-1.2_x')
    for bad in ('/srv/a b', '/srv/"x', '/srv/a;b', '/srv/a\nb', '/srv/{a}'):
        with pytest.raises(nfs_nodes.NodesError):
            nfs_nodes.check_directory(bad)


def test_ganesha_config():
    conf = nfs_nodes.ganesha_config('/srv/d/node3', '/node3', '/st/rec')
    assert 'Path = "/srv/d/node3";' in conf
    assert 'Pseudo = "/node3";' in conf
    assert 'RecoveryRoot = "/st/rec";' in conf
    assert 'NFS_Port = %d;' % nfs_nodes.NFS_PORT in conf
    assert 'MNT_Port = %d;' % nfs_nodes.MOUNTD_PORT in conf
    assert 'Squash = No_Root_Squash;' in conf
    assert 'Access_Type = RW;' in conf
    assert conf.count('{') == conf.count('}')


def test_url():
    assert nfs_nodes.url('10.237.1.2', '/node0', 'a.qcow2') == \
        'nfs://10.237.1.2/node0/a.qcow2'
    assert nfs_nodes.url('10.237.1.2', '/node0', '/a.qcow2') == \
        'nfs://10.237.1.2/node0/a.qcow2'
    assert nfs_nodes.url('10.237.1.2', '/node0') == 'nfs://10.237.1.2/node0/'


def test_nodes_environment(tmp_path):
    nodes = nfs_nodes.Nodes(2, str(tmp_path), latency_ms=1)
    for i, x in enumerate((5, 9)):
        nodes.nodes.append(nfs_nodes.Node(i, 1234, '%s/node%d' %
                                          (tmp_path, i), x, '/st', True))
    assert nodes[1].namespace == 'sqemu-nfs1234-1'
    assert nodes[1].proxy_namespace == 'sqemu-nfs1234-1p'
    assert nodes.url(1, 'x.qcow2') == 'nfs://10.237.9.6/node1/x.qcow2'
    env = nodes.environment()
    assert env['SQEMU_NFS_NODES'] == '10.237.5.6 10.237.9.6'
    assert env['SQEMU_NFS_DIRECT'] == '10.237.5.2 10.237.9.2'
    assert env['SQEMU_NFS_EXPORTS'] == '/node0 /node1'
    assert env['SQEMU_NFS_URLS'] == \
        'nfs://10.237.5.6/node0/ nfs://10.237.9.6/node1/'
    assert env['SQEMU_NFS_DIRS'] == '%s/node0 %s/node1' % (tmp_path,
                                                           tmp_path)
    direct = nfs_nodes.Node(0, 1234, '/d/node0', 5, '/st', False)
    assert direct.address == direct.direct_address == '10.237.5.2'
    assert direct.proxy_namespace is None
    assert ' direct ' not in direct.describe()


def test_nodes_cannot_run_unprivileged(tmp_path, monkeypatch):
    monkeypatch.setattr(nfs_nodes.os, 'geteuid', lambda: 1000)
    with pytest.raises(nfs_nodes.CannotRun) as e:
        with nfs_nodes.Nodes(1, str(tmp_path)):
            pass
    assert 'root' in str(e.value)
    with pytest.raises(nfs_nodes.NodesError):
        nfs_nodes.Nodes(0, str(tmp_path))


def test_link_arrival():
    link = nfs_nodes.Link(0.001)
    assert link.arrival(10.0, 1 << 20) == pytest.approx(10.001)
    # a rate: chunks queue behind one another on the link
    link = nfs_nodes.Link(0.001, rate=1000.0)
    assert link.arrival(10.0, 500) == pytest.approx(10.501)
    assert link.arrival(10.0, 500) == pytest.approx(11.001)
    # an idle link starts sending at once
    assert link.arrival(20.0, 1000) == pytest.approx(21.001)


def echo_server():
    """A TCP echo server on 127.0.0.1 (an ephemeral port); its port"""
    server = socket.create_server(('127.0.0.1', 0))

    def serve():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


class CountingProxy(nfs_nodes.Proxy):
    """A proxy that counts its reads and the most bytes a direction held"""

    reads = 0
    most_queued = 0

    def read(self, sock, conn):
        self.reads += 1
        super().read(sock, conn)
        for d in conn.directions:
            self.most_queued = max(self.most_queued, d.queued)


def listener(port):
    """A listening socket on 127.0.0.2:@port (the test skips without)"""
    try:
        return socket.create_server(('127.0.0.2', port))
    except OSError as e:
        pytest.skip('cannot listen on 127.0.0.2:%d: %s' % (port, e))


def proxy(port, latency_ms, rate=None):
    """A proxy on 127.0.0.2:@port forwarding to 127.0.0.1:@port"""
    delay = latency_ms / 2000
    links = (nfs_nodes.Link(delay, rate), nfs_nodes.Link(delay, rate))
    server = CountingProxy()
    server.listen(listener(port), '127.0.0.1', port, links)
    threading.Thread(target=server.run, daemon=True).start()
    return server


def round_trip(sock, size):
    start = time.monotonic()
    sock.sendall(b'x' * size)
    got = 0
    while got < size:
        data = sock.recv(65536)
        assert data
        got += len(data)
    return time.monotonic() - start


def test_proxy_adds_latency():
    port = echo_server()
    proxy(port, 40)
    with socket.create_connection(('127.0.0.2', port)) as sock:
        times = [round_trip(sock, 100) for _ in range(3)]
    # every round trip is delayed (no upper bound: a loaded machine may
    # take longer, which says nothing about the proxy)
    assert min(times) >= 0.040


def test_proxy_does_not_serialize_connections():
    port = echo_server()
    proxy(port, 200)
    socks = [socket.create_connection(('127.0.0.2', port))
             for _ in range(10)]
    start = time.monotonic()
    for sock in socks:
        sock.sendall(b'y' * 10)
    for sock in socks:
        assert sock.recv(100) == b'y' * 10
        sock.close()
    # ten concurrent round trips of 200 ms take 0.2 s; serialized, they
    # would take at least 2 s: half of that is the bound, far from both
    assert time.monotonic() - start < 1.0


def test_proxy_caps_bandwidth():
    port = echo_server()
    proxy(port, 0, rate=4e6)
    with socket.create_connection(('127.0.0.2', port)) as sock:
        took = round_trip(sock, 2 << 20)
    # 2 MiB at 4 MB/s; each direction is its own link, and the echo
    # overlaps them, so one direction's time is the least it takes
    assert took >= (2 << 20) / 4e6


def test_proxy_half_close():
    port = echo_server()
    proxy(port, 10)
    with socket.create_connection(('127.0.0.2', port)) as sock:
        sock.sendall(b'bye')
        sock.shutdown(socket.SHUT_WR)
        data = b''
        while True:
            chunk = sock.recv(100)
            if not chunk:
                break
            data += chunk
    assert data == b'bye'


def wait_until(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_proxy_sub_millisecond_latency():
    # a delay under a millisecond is applied, not lost to rounding
    port = echo_server()
    proxy(port, 0.5)
    with socket.create_connection(('127.0.0.2', port)) as sock:
        times = [round_trip(sock, 100) for _ in range(20)]
    assert min(times) >= 0.0005


def test_proxy_forwards_in_order_with_backpressure():
    # more than a direction holds (QUEUE_BYTES): reading stops and goes
    # on, every byte arrives once and in order
    port = echo_server()
    server = proxy(port, 2)
    size = 3 * nfs_nodes.QUEUE_BYTES
    data = bytes(random.Random(1).getrandbits(8) for _ in range(65536))
    data = (data * (size // len(data) + 1))[:size]
    with socket.create_connection(('127.0.0.2', port)) as sock:
        sender = threading.Thread(target=sock.sendall, args=(data,))
        sender.start()
        got = bytearray()
        while len(got) < size:
            chunk = sock.recv(1 << 20)
            assert chunk
            got += chunk
        sender.join()
    assert bytes(got) == data
    # reading stopped at the limit: at most one chunk more
    assert server.most_queued <= nfs_nodes.QUEUE_BYTES + nfs_nodes.CHUNK


def test_proxy_closes_what_ends():
    # a reset on one side ends both, and the proxy forgets the connection
    port = echo_server()
    server = proxy(port, 1)
    sock = socket.create_connection(('127.0.0.2', port))
    assert round_trip(sock, 10) > 0
    assert wait_until(lambda: len(server.sockets) == 2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack('ii', 1, 0))
    sock.close()
    assert wait_until(lambda: not server.sockets)
    # and a clean close (both halves) as well
    with socket.create_connection(('127.0.0.2', port)) as sock:
        assert round_trip(sock, 10) > 0
    assert wait_until(lambda: not server.sockets)


def test_timer():
    timer = nfs_nodes.Timer()
    epoll = select.epoll()
    epoll.register(timer.fd, select.EPOLLIN)
    try:
        start = time.monotonic()
        timer.arm(start + 0.002)
        assert epoll.poll(5)
        assert time.monotonic() >= start + 0.002
        timer.clear()
        # disarmed: nothing fires
        timer.arm(time.monotonic() + 0.001)
        timer.arm(None)
        assert epoll.poll(0.05) == []
    finally:
        epoll.close()
        timer.close()


def test_proxy_idle_after_both_ends_close():
    # the node ends its side at once; the client's last bytes and its end
    # are still on the link: the proxy waits for them without spinning on
    # the client's socket, which has ended both ways
    server_sock = socket.create_server(('127.0.0.1', 0))
    port = server_sock.getsockname()[1]
    received = []

    def node():
        conn, _ = server_sock.accept()
        with conn:
            conn.shutdown(socket.SHUT_WR)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                received.append(data)

    threading.Thread(target=node, daemon=True).start()
    server = proxy(port, 200)
    with socket.create_connection(('127.0.0.2', port)) as sock:
        assert sock.recv(100) == b''        # the node's end, 0.1 s later
        sock.sendall(b'z' * 1000)
        sock.shutdown(socket.SHUT_WR)
        assert wait_until(lambda: not server.sockets)
    assert b''.join(received) == b'z' * 1000
    # two ends and a chunk read; a spin would read thousands of times
    assert server.reads < 20


def test_proxy_node_refuses():
    # nothing listens on the node's port: the client's connection ends
    with socket.create_server(('127.0.0.1', 0)) as unused:
        port = unused.getsockname()[1]
    server = proxy(port, 1)
    with socket.create_connection(('127.0.0.2', port)) as sock:
        try:
            assert sock.recv(100) == b''
        except ConnectionResetError:
            pass
    assert wait_until(lambda: not server.sockets)


def test_net_namespace_makes_sockets_there_and_comes_back():
    if os.geteuid() != 0 or not nfs_nodes.which('ip'):
        pytest.skip('needs root and ip(8) to make a network namespace')
    name = 'sqemu-test-netns-%d' % os.getpid()
    res = subprocess.run(['ip', 'netns', 'add', name],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        pytest.skip('cannot make a network namespace: %s' % res.stdout)
    try:
        subprocess.run(['ip', '-n', name, 'link', 'set', 'lo', 'up'],
                       check=True)
        home = os.readlink('/proc/thread-self/ns/net')
        ns = nfs_nodes.NetNamespace(name)
        try:
            server = ns.make(socket.create_server, ('127.0.0.1', 0))
            port = server.getsockname()[1]
            assert os.readlink('/proc/thread-self/ns/net') == home
            # our loopback has nothing on that port; the namespace's has
            with socket.socket() as sock:
                assert sock.connect_ex(('127.0.0.1', port)) != 0
            with nfs_nodes.in_namespace(ns, socket.socket) as sock:
                assert sock.connect_ex(('127.0.0.1', port)) == 0
            assert os.readlink('/proc/thread-self/ns/net') == home
            server.close()
        finally:
            ns.close()
    finally:
        subprocess.run(['ip', 'netns', 'delete', name])


def test_proxy_routes_have_links_of_their_own():
    # each listener's connections go over the links it was given: a
    # node's bandwidth is shared by its connections, not by the nodes
    ports = [echo_server(), echo_server()]
    server = CountingProxy()
    given = []
    for port in ports:
        links = (nfs_nodes.Link(0.001), nfs_nodes.Link(0.001))
        given.append(links)
        server.listen(listener(port), '127.0.0.1', port, links)
    threading.Thread(target=server.run, daemon=True).start()
    socks = [socket.create_connection(('127.0.0.2', p)) for p in ports]
    try:
        for sock in socks:
            assert round_trip(sock, 1000) > 0
        used = {}
        for _, conn in list(server.sockets.values()):
            port = conn.sockets[1].getpeername()[1]
            used[port] = tuple(d.link for d in conn.directions)
        assert used == {ports[0]: given[0], ports[1]: given[1]}
    finally:
        for sock in socks:
            sock.close()


def test_parse_route():
    assert nfs_nodes.parse_route('ns1,10.0.0.6,10.0.0.10') == \
        ['ns1', '10.0.0.6', '10.0.0.10']
    assert nfs_nodes.parse_route(',127.0.0.2,127.0.0.1') == \
        ['', '127.0.0.2', '127.0.0.1']
    for bad in ('ns1,10.0.0.6', 'ns1,,10.0.0.10', 'a,b,c,d'):
        with pytest.raises(argparse.ArgumentTypeError,
                           match='NAMESPACE,LISTEN,CONNECT'):
            nfs_nodes.parse_route(bad)

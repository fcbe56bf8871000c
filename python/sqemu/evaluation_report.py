# SPDX-License-Identifier: GPL-2.0-or-later
#
# The evaluation's report: docs/evaluation.md and its plots, from the
# measured figures (eval, or eval --from-json); no measuring here.

import os

from sqemu import bench, util
from sqemu.evaluation_setup import (
    CACHE_CLUSTER, CACHE_ENTRY, CACHE_LAYERS, KERNEL_NOTE, LIVESNAP_DISK,
    LIVESNAP_INTERVAL, PAPER, REPLAY_PACES, REPLAY_TRACES,
    ROCKSDB_SMALL_CACHE, ROCKSDB_VALUE, SNAP_FILL, TARGETS)


def rows(report, figure, build):
    return sorted((r for r in report[figure] if r['build'] == build),
                  key=lambda r: r.get('layers', r.get('size')))


def at(report, figure, build, layers):
    for r in report[figure]:
        if r['build'] == build and r['layers'] == layers:
            return r
    return None


def target_values(report):
    """The issue's targets that this run measured, as name -> value."""
    values = {}
    lengths = {r['layers'] for r in report['dd']}
    if {1, 1000} <= lengths:
        one, top = (at(report, 'dd', 'ours', n) for n in (1, 1000))
        values['dd_ratio'] = top['mb_per_s'] / one['mb_per_s']
        stock, ours = (at(report, 'dd', b, 1000) for b in ('stock', 'ours'))
        if stock['overhead_kib'] and ours['overhead_kib']:
            values['memory_ratio'] = (stock['overhead_kib'] /
                                      ours['overhead_kib'])
        if stock.get('overhead_no_code_kib') and \
                ours.get('overhead_no_code_kib'):
            values['memory_ratio_no_code'] = (
                stock['overhead_no_code_kib'] / ours['overhead_no_code_kib'])
        growth = {}
        for build in ('stock', 'ours'):
            one, top = (at(report, 'dd', build, n) for n in (1, 1000))
            if one['overhead_kib'] and top['overhead_kib']:
                growth[build] = top['overhead_kib'] - one['overhead_kib']
        if len(growth) == 2 and growth['ours'] > 0:
            values['memory_growth_ratio'] = growth['stock'] / growth['ours']
    if {1, 1000} <= {r['layers'] for r in report['boot']}:
        one, top = (at(report, 'boot', 'ours', n) for n in (1, 1000))
        values['boot_ratio'] = top['boot_s'] / one['boot_s']
    db = {r['build']: r['ops_per_s'] for r in report.get('rocksdb', ())
          if r['layers'] == 500 and r['cache'] == 'default'}
    if len(db) == 2 and db['stock']:
        values['rocksdb_ratio'] = db['ours'] / db['stock']
    return values


def write_plots(report, outdir, progress):
    """One PNG per measured figure; returns {figure: file name}."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        progress('matplotlib missing (apt-get install python3-matplotlib): '
                 'no plots')
        return {}
    panels = {
        'memory': ('dd', 'layers', 'overhead_kib', 1 / 1024,
                   'QEMU memory overhead (MiB)', 'chain length', True),
        'dd': ('dd', 'layers', 'mb_per_s', 1, 'guest dd (MB/s)',
               'chain length', True),
        'boot': ('boot', 'layers', 'boot_s', 1, 'boot to shell (s)',
                 'chain length', True),
        'snapshot': ('snapshot', 'size', 'time_s', 1000,
                     'qemu-img create -b (ms)', 'disk size (GiB)', False),
        'cache': ('cache', 'cache_bytes', 'iops', 1,
                  'guest fio 4 KiB random read IOPS', 'total L2 cache (MiB)',
                  False),
    }
    files = {}

    def save(fig, ax, name):
        ax.legend()
        ax.set_title('%s (%s)' % (name, report['accelerator']))
        fig.tight_layout()
        files[name] = 'eval-%s.png' % name
        fig.savefig(os.path.join(outdir, 'eval', files[name]), dpi=100)
        plt.close(fig)

    for name, (figure, xkey, ykey, scale, ylabel, xlabel, logx) in \
            panels.items():
        if not report.get(figure):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for build, colour in (('stock', 'tab:blue'), ('ours', 'tab:orange')):
            data = [r for r in rows(report, figure, build)
                    if r[ykey] is not None]
            xs = [r[xkey] / {'size': 2 ** 30, 'cache_bytes': 2 ** 20}.get(
                xkey, 1) for r in data]
            ax.plot(xs, [r[ykey] * scale for r in data], 'o-',
                    color=colour, label=build)
            if name == 'memory':
                data = [r for r in data if r.get('overhead_no_code_kib')]
                ax.plot([r['layers'] for r in data],
                        [r['overhead_no_code_kib'] / 1024 for r in data],
                        'x--', color=colour,
                        label='%s without TCG code' % build)
        if logx:
            ax.set_xscale('log')
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        save(fig, ax, name)
    if report.get('rocksdb'):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        bars = sorted({(r['layers'], r['cache']) for r in report['rocksdb']})
        for i, build in enumerate(('stock', 'ours')):
            ys = [next((r['ops_per_s'] for r in report['rocksdb']
                        if (r['layers'], r['cache'], r['build']) ==
                        (n, c, build)), 0) for n, c in bars]
            ax.bar([j + i * 0.4 for j in range(len(bars))], ys, 0.4,
                   label=build,
                   color=('tab:blue', 'tab:orange')[i])
        ax.set_xticks([j + 0.2 for j in range(len(bars))])
        ax.set_xticklabels(['N=%d\n%s' % b for b in bars])
        ax.set_ylabel('db_bench readrandom (ops/s)')
        save(fig, ax, 'rocksdb')
    if report.get('nfs'):
        plot_nfs(report, outdir, plt, files)
    if report.get('replay'):
        plot_replay(report, outdir, plt, files)
    return files


# The replay figure's panels: (pace, row field, y label)
REPLAY_PANELS = (('recorded', 'p99', 'p99 latency at the recorded pace (ms)'),
                 ('recorded', 'p50', 'median latency at the recorded pace '
                  '(ms)'),
                 ('max', 'iops', 'IOPS as fast as possible (QD%s)'))
REPLAY_STYLES = {'root': 'o-', 'data': 's--'}
TRACE_NAMES = {'root': 'boot (root disk)', 'data': 'RocksDB (data disk)'}


def replay_row(report, trace, layers, pace, build):
    for r in report['replay']:
        if (r['trace'], r['layers'], r['pace'], r['build']) == \
                (trace, layers, pace, build):
            return r
    return None


def plot_replay(report, outdir, plt, files):
    """One row of panels against chain length: latency at the recorded
    pace, IOPS as fast as possible; a line per build and trace"""
    fig, axes = plt.subplots(1, len(REPLAY_PANELS), figsize=(13, 3.8))
    for ax, (pace, key, ylabel) in zip(axes, REPLAY_PANELS):
        for trace in REPLAY_TRACES:
            for build, colour in (('stock', 'tab:blue'),
                                  ('ours', 'tab:orange')):
                data = sorted((r for r in report['replay']
                               if (r['trace'], r['pace'], r['build']) ==
                               (trace, pace, build) and
                               r.get(key) is not None),
                              key=lambda r: r['layers'])
                if data:
                    ax.plot([r['layers'] for r in data],
                            [r[key] for r in data], REPLAY_STYLES[trace],
                            color=colour, label='%s, %s' % (
                                build, TRACE_NAMES[trace]))
        ax.set_xscale('log')
        ax.set_ylim(bottom=0)
        ax.set_xlabel('chain length')
        ax.set_ylabel(ylabel.replace('%s', str(report.get(
            'replay_iodepth', 16))))
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle('trace replay: the Debian guest\'s boot and RocksDB reads '
                 '(fio nbd engine, qemu-storage-daemon, O_DIRECT)')
    fig.tight_layout()
    files['replay'] = 'eval-replay.png'
    fig.savefig(os.path.join(outdir, 'eval', files['replay']), dpi=100)
    plt.close(fig)


# The nfs figure's panels: (row field, scale, y label, log y)
NFS_PANELS = (('seq_mbps', 1, 'sequential read, QD1 (MB/s)', False),
              ('rand_iops', 1, 'random 4 KiB read, QD16 (IOPS)', False),
              ('open_time_s', 1, 'chain open (s)', True))


def nfs_label(run):
    return ('no added latency' if run['latency_ms'] is None else
            '%g ms round trip' % run['latency_ms'])


def plot_nfs(report, outdir, plt, files):
    """One row of panels: bench's NFS runs, stock and ours, a line
    style per added latency"""
    fig, axes = plt.subplots(1, len(NFS_PANELS), figsize=(13, 3.8))
    styles = ('o-', 's--', '^:')
    for ax, (key, scale, ylabel, logy) in zip(axes, NFS_PANELS):
        for run, style in zip(report['nfs'], styles):
            for build, colour in (('stock', 'tab:blue'),
                                  ('ours', 'tab:orange')):
                data = [r for r in run['results'] if r['build'] == build
                        and r.get(key) is not None]
                ax.plot([r['layers'] for r in data],
                        [r[key] * scale for r in data], style,
                        color=colour,
                        label='%s, %s' % (build, nfs_label(run)))
        ax.set_xscale('log')
        if logy:
            ax.set_yscale('log')
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel('chain length (layers over %d nodes)' %
                      report['nfs'][0]['nodes'])
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle('chains on NFS storage nodes (nfs-ganesha over veth)')
    fig.tight_layout()
    files['nfs'] = 'eval-nfs.png'
    fig.savefig(os.path.join(outdir, 'eval', files['nfs']), dpi=100)
    plt.close(fig)


def plot_lines(plots, *names):
    """The markdown that shows the plots of @names that were drawn"""
    return [line for name in names if name in plots
            for line in ('![%s](eval/%s)' % (name, plots[name]), '')]


def md_table(header, body):
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in body]
    return '\n'.join(lines)


def fmt(value, spec):
    return '-' if value is None else format(value, spec)


def mib(kib, spec='.1f'):
    return fmt(kib and kib / 1024, spec)


def memory_reason(report):
    """Why the memory ratio at N=1000 is what it is, from the measured
    rows: the fixed part of QEMU's resident set against what stock's
    layers add."""
    rows = {(r['build'], r['layers']): r for r in report['dd']}
    needed = [('ours', 1), ('stock', 1), ('stock', 1000), ('ours', 1000)]
    if not all(key in rows and rows[key]['overhead_kib'] for key in needed):
        return []
    ours1, stock1 = rows[('ours', 1)], rows[('stock', 1)]
    stock_top, ours_top = rows[('stock', 1000)], rows[('ours', 1000)]
    per_layer = (stock_top['overhead_kib'] - stock1['overhead_kib']) / 999
    text = ('What sets the ratio: at N=1, with no layers to speak of, '
            'ours\' overhead is already %s MiB' % mib(ours1['overhead_kib']))
    if ours1.get('tcg_code_kib') is not None:
        text += (' (%s MiB of it TCG\'s translated code, %s MiB the rest of '
                 'QEMU: binary, libraries, heap, TCG\'s TLBs)' %
                 (mib(ours1['tcg_code_kib']),
                  mib(ours1['overhead_no_code_kib'])))
    text += ('; ours adds %s MiB for 999 more layers.  Stock adds %.0f KiB '
             'a layer on this %d MiB disk (its L2 cache holds a 64 KiB table '
             'per layer for every 512 MiB of disk read, plus each layer\'s '
             'open qcow2 state), so a 20x ratio of the totals at N=1000 '
             'would need stock at %s MiB or more, %.0f KiB a layer.' %
             (mib(ours_top['overhead_kib'] - ours1['overhead_kib']),
              per_layer, report.get('dd_size', 1 << 30) >> 20,
              mib(20 * ours_top['overhead_kib'], '.0f'),
              (20 * ours_top['overhead_kib'] - stock1['overhead_kib']) / 999))
    return [text, '']


def dd_repeat_note(repeat):
    """What the dd section says of how many reads a point is."""
    if repeat == 1:
        return 'One read per point.'
    return ('Ours reads %d times per point, in rounds that read every '
            'chain length once, so that the machine\'s drift falls on all '
            'lengths alike (the same read varies from run to run; the '
            'targets\' noise column says by how much in this run): the '
            'table has the fastest read and the largest memory overhead '
            'of the %d (all reads are in eval.json); stock reads '
            'once, in the first round.' % (repeat, repeat))


def section_dd(report, plots):
    body = []
    for r in sorted(report['dd'], key=lambda r: (r['layers'], r['build'])):
        body.append((r['layers'], r['build'], fmt(r['seconds'], '.2f'),
                     fmt(r['mb_per_s'], '.1f'), mib(r['peak_rss_kib']),
                     mib(r['overhead_kib']), mib(r.get('tcg_code_kib')),
                     mib(r.get('overhead_no_code_kib'))))
    text = ['## In-guest dd and QEMU memory overhead against chain length',
            '',
            'The initramfs guest (scripts/sqemu/mkguest) reads its whole '
            'virtio-blk disk with `dd bs=4M iflag=direct`; the disk is the '
            'top of a chain whose clusters are spread uniformly over the '
            'layers (both builds read the same, indexed chain: every layer '
            'holds data in each of the disk\'s L2 table regions, so '
            'stock\'s walk is the same as on a plain chain).  At one layer '
            'a 4 MiB guest read is one host read; at N layers its 64 '
            'clusters lie in up to 64 files and are 64 reads.  %s' %
            dd_repeat_note(report.get('dd_repeat', 1)),
            '',
            'Memory overhead is QEMU\'s resident set minus the guest RAM '
            'mapping\'s, from /proc/PID/smaps every 0.25 s (vmrun), its '
            'peak.  Under TCG it includes the translated-code buffer (the '
            'anonymous executable mapping; KVM has none), shown apart and '
            'subtracted in the last column.',
            '',
            md_table(('N', 'build', 'dd s', 'MB/s', 'peak RSS MiB',
                      'overhead MiB', 'TCG code MiB',
                      'overhead without TCG code MiB'), body), '']
    text += memory_reason(report)
    text += ['Paper: %s; %s.' % (PAPER['dd'], PAPER['memory']), '']
    return text + plot_lines(plots, 'dd', 'memory')


def section_boot(report, plots):
    body = [(r['layers'], r['build'], fmt(r['boot_s'], '.1f'),
             mib(r['peak_rss_kib']))
            for r in sorted(report['boot'],
                            key=lambda r: (r['layers'], r['build']))]
    return ['## Boot time against chain length', '',
            'The Debian guest (scripts/sqemu/mkimage: debootstrap, systemd, '
            'fio, rocksdb-tools) boots from a root disk at the top of an '
            'N-layer chain (mkchain --base: layer 1 is the image, the layers '
            'above are live snapshots that hold no data, so every read of the '
            'root filesystem walks to the base).  Each build boots from the '
            'chain it makes itself: ours\' layers are indexed (each holds an '
            'L2 copy), stock\'s are plain overlays with no L2 tables, so its '
            'walk down checks one L1 entry per layer.  Boot '
            'time is from QEMU\'s start to the root shell on the serial '
            'console; the fastest of %d boot(s) per point (ours; stock: %d), '
            'since this machine\'s noise only ever adds time (all boots are '
            'in eval.json); the boots go round the lengths in turn, so that '
            'the machine\'s drift over the run falls on all of them.  '
            'At N=1 both builds run the same code (there is no backing '
            'file), so their difference shows the run-to-run noise; '
            '--quick boots only ours there.%s' %
            (report.get('boot_repeat', 1),
             report.get('boot_repeat_stock', report.get('boot_repeat', 1)),
             KERNEL_NOTE.get(report.get('boot_kernel'), '')),
            '',
            md_table(('N', 'build', 'boot s', 'peak RSS MiB'), body), '',
            'Paper: %s.' % PAPER['boot'], ''] + plot_lines(plots, 'boot')


def section_snapshot(report, plots):
    body = [(r['size'] >> 30, r['build'], fmt(r['time_s'] * 1000, '.0f'),
             fmt(r['growth_bytes'] / 1024, '.0f'))
            for r in sorted(report['snapshot'],
                            key=lambda r: (r['size'], r['build']))]
    return ['## Snapshot creation against disk size', '',
            '`qemu-img create -f qcow2 -b TOP -F qcow2 SNAP`, stock against '
            'ours with `-o backing-index=on` (L2 copy), on a one-layer disk '
            'with %d%% of its clusters written; median of the runs, and the '
            'new file\'s allocated size.' % (SNAP_FILL * 100), '',
            md_table(('GiB', 'build', 'create ms', 'new file KiB'), body), '',
            'Paper: %s.' % PAPER['snapshot'],
            ''] + plot_lines(plots, 'snapshot')


def section_counters(report, _plots):
    keys = ('lookups', 'hits', 'misses', 'hit-unallocated', 'corrections',
            'lower-slice-reads', 'direct-reads', 'vanilla-fallbacks')
    present = [k for k in keys
               if any(k in r for r in report['counters'])]
    body = [[r['layers']] + [r.get(k, '-') for k in present]
            for r in sorted(report['counters'], key=lambda r: r['layers'])]
    return ['## Unified cache counters for a full-disk read', '',
            'Ours\' `qemu-io -r` reads the dd figure\'s disk once and prints '
            '`sqemu-stats`.', '',
            md_table(['N'] + present, body), '']


def section_cache(report, plots):
    disk = report.get('cache_disk', 1 << 30)
    body = [(r['cache_bytes'] >> 10, r['build'], fmt(r['iops'], '.0f'),
             mib(r['overhead_kib']))
            for r in sorted(report['cache'],
                            key=lambda r: (r['cache_bytes'], r['build']))]
    return ['## In-guest fio random reads against L2 cache size', '',
            'fio (4 KiB random reads, QD16, libaio, O_DIRECT, %s s) in the '
            'Debian guest on a %d-layer chain of a %d MiB disk with %d KiB '
            'clusters, %d%% of them written, spread uniformly over the '
            'layers (mkchain; the rest reads as zeroes through every '
            'layer).  Each build reads the chain it makes itself, the same '
            'clusters in the same layers: ours by live snapshots (L2 '
            'copies), stock\'s plain qcow2 overlays (qemu-img create -b, '
            'L2 tables only where a layer holds data).  The whole disk '
            'needs %d MiB of unified cache (16 '
            'bytes a cluster) and %d MiB of L2 tables per layer.  Stock '
            'gets the total split evenly over its layers (one -blockdev per '
            'layer with l2-cache-size=TOTAL/%d); ours gets it as '
            'unified-cache-size plus the same per-layer share for the top\'s '
            'own L2 cache, which its index lookups use.  Both use '
            'l2-cache-entry-size=%d (the smallest entry that lets stock '
            'split 1 MiB over %d layers: qcow2 keeps two entries per layer '
            'at least).' % (
                report.get('fio_seconds', '?'), CACHE_LAYERS,
                disk >> 20, CACHE_CLUSTER >> 10,
                report.get('cache_fill', 0) * 100,
                (disk // CACHE_CLUSTER * 16) >> 20,
                (disk // CACHE_CLUSTER * 8) >> 20, CACHE_LAYERS,
                CACHE_ENTRY, CACHE_LAYERS), '',
            md_table(('total cache KiB', 'build', 'IOPS', 'overhead MiB'),
                     body), '',
            'Paper: %s.' % PAPER['cache'], ''] + plot_lines(plots, 'cache')


def section_rocksdb(report, plots):
    rows_ = sorted(report['rocksdb'],
                   key=lambda r: (r['layers'], r['cache'], r['build']))
    body = []
    for r in rows_:
        stock = next(x for x in rows_ if x['build'] == 'stock' and
                     (x['layers'], x['cache']) == (r['layers'], r['cache']))
        ratio = (r['ops_per_s'] / stock['ops_per_s']
                 if r['build'] == 'ours' and stock['ops_per_s'] else None)
        body.append((r['layers'], r['cache'], r['build'],
                     fmt(r['ops_per_s'], '.0f'), fmt(ratio, '.2f'),
                     mib(r['overhead_kib'])))
    return ['## RocksDB readrandom at N=50 and N=500', '',
            'A RocksDB database (db_bench fillseq of %s keys with %d-byte '
            'values, uncompressed, then compacted, on the host) on an ext4 '
            'disk of %s MiB is the base of an N-layer chain (mkchain --base: '
            'live snapshots above it that hold no data; ours indexed, '
            'stock\'s plain, as in the boot figure).  In the Debian '
            'guest, `db_bench --readonly --use_existing_db --benchmarks='
            'readrandom --use_direct_reads --cache_size=8388608` for %s s, '
            'one thread (YCSB workload C: uniform random reads only); every '
            'read must find its key.  Cache "default" is each build\'s own '
            'default (stock: one L2 cache per layer covering the disk; '
            'ours: the unified cache); "small" is %d KiB in all, split as '
            'in the cache figure.' % (
                report.get('rocksdb_keys', '?'), ROCKSDB_VALUE,
                fmt(rows_[0]['disk_bytes'] / 2 ** 20, '.0f'),
                report.get('rocksdb_seconds', '?'),
                ROCKSDB_SMALL_CACHE >> 10), '',
            md_table(('N', 'cache', 'build', 'ops/s', 'ours / stock',
                      'overhead MiB'), body), '',
            'Paper: %s.' % PAPER['rocksdb'], ''] + plot_lines(plots, 'rocksdb')


def section_livesnap(report, _plots):
    body = [(r['build'], r['snapshots'],
             fmt(r['snapshot_ms_median'], '.0f'),
             fmt(r['snapshot_ms_max'], '.0f'),
             fmt(r['write_ms_median'], '.2f'),
             fmt(r['pause_ms_median'], '.1f'), fmt(r['pause_ms_max'], '.1f'),
             r['writes'], r['guest_verify_errors'],
             ', '.join('%s %d' % kv
                       for kv in sorted(r['host_verify_errors'].items())))
            for r in report['livesnap']]
    return ['## Live snapshots of a writing guest', '',
            'The Debian guest writes 64 KiB O_DIRECT blocks over a %d MiB '
            'data disk, one after another and round again (each block '
            'names itself and its generation), while the host takes live '
            'snapshots of the disk over QMP (blockdev-snapshot-sync, %.1f s '
            'apart; ours\' disk has backing-index=on, so each snapshot '
            'copies the L2 tables).  Then the guest stops, reads every '
            'block back and checks it, and after QEMU exits both builds\' '
            'qemu-io read the final chain and check every block again.  '
            '"QMP ms" is the host\'s time for the command; the pause a '
            'snapshot causes is what one guest write waits, so "pause" '
            'is the median and maximum of the guest\'s %s longest writes '
            '(one per snapshot) against the median write.' % (
                LIVESNAP_DISK >> 20, LIVESNAP_INTERVAL,
                report['livesnap'][0]['snapshots']), '',
            md_table(('build', 'snapshots', 'QMP ms median', 'QMP ms max',
                      'write ms median', 'pause ms median',
                      'pause ms max', 'writes', 'guest verify errors',
                      'host verify errors (reader)'), body), '']


def nfs_row(run, build, layers):
    for r in run['results']:
        if r['build'] == build and r['layers'] == layers:
            return r
    return {}


def seq_how(run):
    """How the NFS figure's sequential reads of @run were made"""
    if run.get('seq_slices'):
        return ('the median of %d rounds in each of which every chain\'s '
                'daemon (fresh) runs side by side with the others and fio '
                'reads the %d MiB disk from each in turn, in %d pieces, 64 '
                'KiB at QD1 over NBD, bench --seq-paired (each round\'s '
                'ratio is shown)' % (run['repeat'], run['size'] >> 20,
                                     run['seq_slices']))
    return 'qemu-img bench, the median of %d reads of the %d MiB disk' % (
        run['repeat'], run['size'] >> 20)


def round_ratios(tops, ones):
    """Each round's @tops / @ones, or '-' without a pair per round"""
    if not tops or not ones or len(tops) != len(ones):
        return '-'
    return ' '.join('%.3f' % (a / b) if b else '-' for a, b in zip(tops, ones))


def section_nfs(report, plots):
    runs = report['nfs']
    first = runs[0]
    body = []
    for run in runs:
        for r in sorted(run['results'],
                        key=lambda r: (r['layers'], r['build'] != 'stock')):
            body.append((nfs_label(run), r['layers'], r['build'],
                         fmt(r.get('seq_mbps'), '.1f'),
                         fmt(r.get('rand_iops'), '.0f'),
                         fmt(r['open_time_s'] * 1000
                             if r.get('open_time_s') is not None else None,
                             '.0f'),
                         '; '.join(r.get('errors', ())) or '-'))
    ratios = []
    for run in runs:
        lengths = sorted({r['layers'] for r in run['results']})
        lo, hi = lengths[0], lengths[-1]
        one, top = nfs_row(run, 'ours', lo), nfs_row(run, 'ours', hi)
        stock = nfs_row(run, 'stock', hi)
        ratio = bench.ratio
        ratios.append((
            nfs_label(run), 'N=%d / N=%d' % (hi, lo),
            fmt(ratio(top.get('seq_mbps'), one.get('seq_mbps')), '.3f'),
            # a time's ratio is the other way round from a rate's
            round_ratios(one.get('seq_times_s'), top.get('seq_times_s'))
            if run.get('seq_slices') else '-',
            fmt(ratio(top.get('rand_iops'), one.get('rand_iops')), '.3f'),
            round_ratios(top.get('rand_iops_all'), one.get('rand_iops_all')),
            fmt(ratio(top.get('seq_mbps'), stock.get('seq_mbps')), '.1f'),
            fmt(ratio(stock.get('open_time_s'), top.get('open_time_s')),
                '.1f')))
    return ['## Chains on NFS storage nodes', ''] + \
        plot_lines(plots, 'nfs') + [
        'bench\'s NFS mode (scripts/sqemu/bench --nfs-nodes %d): each '
        'chain is made and indexed on local disk, then its layers are '
        'placed in contiguous ranges on %d NFS storage nodes '
        '(scripts/sqemu/nfs-nodes: nfs-ganesha with the VFS backend, each '
        'in its own network namespace behind a veth pair; the added round '
        'trip comes from a userspace proxy) with %s backing file names, '
        'and both builds open them by nfs:// URL.  Sequential: %s; a read '
        'slower than 60 s is not repeated; random: fio 4 KiB reads at QD16 '
        'through a qemu-storage-daemon\'s NBD export%s; open: qemu-io -r '
        '-c quit.  Ours shares one mount and TCP connection per node (patch '
        '0055); stock 7.2 holds one per layer.  A measurement that failed '
        'is shown with its error.' % (
            first['nodes'], first['nodes'], first.get('names') or
            'absolute', seq_how(first),
            ', the median of %d rounds in each of which every chain\'s '
            'daemon (fresh) runs side by side with the others and fio reads '
            'from each in turn, 1 s at a time (bench --rand-paired; each '
            'round\'s ratio is shown)' % first['rand_repeat']
            if first.get('rand_repeat', 1) > 1 else ''), '',
        md_table(('NFS', 'N', 'build', 'seq MB/s', 'rand IOPS', 'open ms',
                  'errors'), body), '',
        md_table(('NFS', 'ours', 'seq', 'seq, each round', 'rand',
                  'rand, each round',
                  'seq, ours / stock', 'open, stock / ours'), ratios), '']


def replay_rounds_note(rounds):
    """What the replay section says of how many replays a point is"""
    if rounds == 1:
        return 'one replay per point.'
    return ('each point the median of %d replays (`--rounds %d`: the '
            'build that goes first alternates from round to round, since '
            'this machine\'s timings drift over minutes; "fio s" is the '
            'median wall time of fio, all replays are in eval.json).' %
            (rounds, rounds))


def section_replay(report, plots):
    traces = []
    for t in sorted(report.get('replay_traces', ()),
                    key=lambda t: REPLAY_TRACES.index(t['trace'])):
        counts = t['counts']
        lat = t['recorded_latency_ms'].get('read', {})
        traces.append((
            TRACE_NAMES[t['trace']], t['base'], t['records'], t['dropped'],
            counts.get('read', {}).get('ios', 0),
            fmt(counts.get('read', {}).get('bytes', 0) / 2 ** 20, '.1f'),
            counts.get('write', {}).get('ios', 0),
            counts.get('sync', {}).get('ios', 0),
            counts.get('trim', {}).get('ios', 0),
            fmt(t['span_s'], '.1f'), fmt(lat.get('p50'), '.3f'),
            fmt(lat.get('p99'), '.3f')))
    body = []
    for r in sorted(report['replay'], key=lambda r: (
            REPLAY_TRACES.index(r['trace']), r['layers'],
            REPLAY_PACES.index(r['pace']), r['build'] != 'stock')):
        stock = replay_row(report, r['trace'], r['layers'], r['pace'],
                           'stock')
        ratios = ('', '', '')
        if r['build'] == 'ours' and stock:
            ratios = tuple(fmt(bench.ratio(r.get(k), stock.get(k)), '.2f')
                           for k in ('iops', 'p50', 'p99'))
        c = r.get('index_counters') or {}
        body.append((TRACE_NAMES[r['trace']], r['layers'], r['pace'],
                     r['build'], fmt(r.get('iops'), '.0f'),
                     fmt(r.get('mb_s'), '.2f'), fmt(r.get('p50'), '.3f'),
                     fmt(r.get('p90'), '.3f'), fmt(r.get('p99'), '.3f'),
                     fmt(r.get('max'), '.3f'), fmt(r.get('wall_s'), '.1f'))
                    + ratios + (
                        'yes' if r['operations_match'] else '**no**',
                        '%d / %d' % (c.get('direct-reads', 0),
                                     c.get('vanilla-fallbacks', 0))
                        if c else '-'))
    first = (report.get('replay_traces') or [{}])[0]
    lengths = ', '.join(str(n) for n in report.get(
        'replay_lengths', sorted({r['layers'] for r in report['replay']})))
    return ['## Trace replay: the Debian guest\'s boot and RocksDB reads', '',
            'One run of the Debian guest under ours (`vmrun --io-trace`: '
            'QEMU starts paused, `block-io-trace-start` records drive '
            '`root` and drive `data`, then the guest runs) boots with '
            'systemd (%s s to the shell) from the Debian image and runs the '
            'rocksdb workload of the RocksDB figure (%s s of db_bench '
            'readrandom, %s ops/s) on the database disk; QEMU completes '
            'both traces when the guest powers off.  The boot trace is the '
            'root disk\'s requests from the first read of the boot to the '
            'power-off, the RocksDB trace the data disk\'s (udev\'s first '
            'look at it, the mount, db_bench\'s reads).  Each is converted '
            'to a fio iolog (`trace convert --from sqemu`) and replayed by '
            '`scripts/sqemu/trace replay --pace both --skip-trims` (fio\'s '
            'nbd engine against each build\'s qemu-storage-daemon, '
            'O_DIRECT, each replay on a fresh copy of the top) at N=%s: the '
            'disk the trace was recorded on is the base of an N-layer chain '
            '(mkchain --base: a qcow2 copy of it, then live snapshots that '
            'hold no data, so every read walks to the base), ours\' '
            'indexed, stock\'s plain overlays, each build replaying its '
            'own (`--stock-chain`).  "recorded" keeps the trace\'s times '
            '(one operation in flight: the IOPS are the trace\'s own rate '
            'while both keep up, the latencies differ); "max" replays as '
            'fast as possible at QD16.  Latencies are fio\'s completion '
            'latencies over all operations, in ms; %s' % (
                fmt(first.get('guest_boot_s'), '.1f'),
                report.get('rocksdb_seconds', '?'),
                fmt(first.get('rocksdb_ops_per_s'), '.0f'), lengths,
                replay_rounds_note(report.get('replay_rounds', 1))), '',
            md_table(('trace', 'disk', 'requests', 'dropped', 'reads',
                      'read MiB', 'writes', 'syncs', 'trims', 'span s',
                      'recorded read p50 ms', 'recorded read p99 ms'),
                     traces), '',
            md_table(('trace', 'N', 'pace', 'build', 'IOPS', 'MB/s',
                      'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'fio s',
                      'IOPS ours / stock', 'p50 ours / stock',
                      'p99 ours / stock', 'operations = trace\'s',
                      'ours\' direct reads / vanilla fallbacks'), body), '',
            'Paper: %s.' % PAPER['replay'], ''] + plot_lines(plots, 'replay')


# Figures whose target is a ratio of ours' fastest repeats: {figure: the
# rows' field of all repeats' times}
NOISY = {'dd': 'dd_times_s', 'boot': 'boot_times_s'}
# What a figure's target needs measured, when a run did not
TARGET_NEEDS = {'rocksdb': 'the default caches at N=500'}


def repeat_spread(report, figure):
    """The largest slowest/fastest of ours' repeats at N=1 and N=1000 in
    @figure, or None without repeats."""
    field = NOISY[figure]
    spreads = [max(r[field]) / min(r[field]) for r in report[figure]
               if r['build'] == 'ours' and r['layers'] in (1, 1000) and
               len(r.get(field) or ()) > 1]
    return max(spreads) if spreads else None


def write_report(report, outdir, progress):
    os.makedirs(os.path.join(outdir, 'eval'), exist_ok=True)
    plots = write_plots(report, outdir, progress)
    values = target_values(report)
    text = ['# sQemu evaluation: stock QEMU against sQemu', '',
            'Written by `%s` on %s in %.0f s; this file and eval/*.png are '
            'its output.' % (report['command'], report['date'],
                             report['seconds']), '',
            '* machine: %d CPUs (%s), kernel %s' % (
                report['machine']['nproc'], report['machine']['cpu'],
                report['machine']['kernel']),
            '* accelerator: **%s** (%s)' % (report['accelerator'],
                                            report['accel_note']),
            '* stock: %s' % report['builds']['stock'],
            '* ours: %s' % report['builds']['ours'], '']
    for m in report.get('merged', ()):
        text += ['Figure%s %s measured later, by `%s` on %s in %.0f s (ours: '
                 '%s).' % ('s' if len(m['figures']) > 1 else '',
                           ', '.join(m['figures']), m['command'], m['date'],
                           m['seconds'], m['builds']['ours']), '']
    text += ['## Targets', '']
    body = []
    for figure, name, key, op, goal in TARGETS:
        value = values.get(key)
        spread = repeat_spread(report, figure) if figure in NOISY else None
        if value is None:
            verdict = 'not measured (needs %s)' % TARGET_NEEDS.get(
                figure, 'N=1 and N=1000')
        else:
            met = value >= goal if op == '>=' else value <= goal
            verdict = 'met' if met else 'NOT met'
            if spread and value / spread <= goal <= value * spread:
                verdict += ' (within this run\'s noise)'
        body.append((name, fmt(value, '.3f'), '%s %g' % (op, goal),
                     '+%.0f%%' % ((spread - 1) * 100) if spread else '-',
                     verdict))
    text += [md_table(('target', 'measured', 'goal', 'noise', ''), body),
             '',
             'Noise: how much slower ours\' slowest repeat of one point '
             '(N=1 or N=1000, the same chain) was than its fastest, the '
             'largest of the two; a ratio of two fastest times can be off '
             'by about that much either way, so a goal within it is not '
             'decided by this run.', '']
    for figure, section in (('dd', section_dd), ('boot', section_boot),
                            ('snapshot', section_snapshot),
                            ('counters', section_counters),
                            ('cache', section_cache),
                            ('rocksdb', section_rocksdb),
                            ('livesnap', section_livesnap),
                            ('nfs', section_nfs),
                            ('replay', section_replay)):
        if report.get(figure):
            text += section(report, plots)
    with open(os.path.join(outdir, 'evaluation.md'), 'w') as f:
        f.write('\n'.join(text))
    util.write_json(os.path.join(outdir, 'eval', 'eval.json'), report)
    return values

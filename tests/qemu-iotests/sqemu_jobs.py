# SPDX-License-Identifier: GPL-2.0-or-later
#
# sQemu's Python iotests: the jobs sQemu starts on its own.  After a chain
# operation that leaves a running top's backing index without validation
# (a block-commit deeper down, a mirror pivot onto a target without an
# index, blockdev-reopen with another backing file, an image rebased
# offline), QEMU indexes the chain again in the background, as a job of
# type "amend" named "sqemu-index-<node>".

BACKGROUND_PREFIX = 'sqemu-index-'


def wait_background_index(vm, timeout=60):
    """Wait until a background index job has gone (JOB_STATUS_CHANGE to
    "null"; events that came before are still queued in @vm).  Returns a
    line saying how it ended (its events do not say whether a job that
    stopped early was cancelled or failed), or that none came within
    @timeout s."""
    statuses = []
    while True:
        ev = vm.event_wait('JOB_STATUS_CHANGE', timeout=timeout)
        if ev is None:
            return 'no background index job within %d s' % timeout
        data = ev['data']
        if not data['id'].startswith(BACKGROUND_PREFIX):
            continue
        statuses.append(data['status'])
        if data['status'] == 'null':
            ended = 'stopped early (cancelled or failed)' \
                if 'aborting' in statuses else 'concluded'
            return 'the background index job %s' % ended


def background_jobs(vm):
    """The background index jobs that exist now"""
    return [j for j in vm.qmp('query-jobs')['return']
            if j['id'].startswith(BACKGROUND_PREFIX)]

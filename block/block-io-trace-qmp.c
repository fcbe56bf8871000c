/*
 * sQemu: QMP commands for recording the block I/O a device sends to its disk
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * block-io-trace-start, block-io-trace-stop and query-block-io-traces: a
 * trace is named by the BlockBackend it records, as the other block device
 * commands name one (a -drive's name, or a device's qdev id or QOM path; a
 * virtio-blk-pci's id stands for its virtio-backend's path), or by a block
 * export's id, which is how qemu-storage-daemon's disks are known.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-block-core.h"
#include "sysemu/block-backend.h"
#include "block/export.h"
#include "block/block-io-trace.h"

/* The BlockBackend exactly one of @device, @id and @export names */
static BlockBackend *block_io_trace_lookup(bool has_device, const char *device,
                                           bool has_id, const char *id,
                                           bool has_export, const char *export,
                                           const char **target, Error **errp)
{
    BlockBackend *blk;
    BlockExport *exp;

    if (has_device + has_id + has_export != 1) {
        error_setg(errp, "Give exactly one of 'device', 'id' and 'export'");
        return NULL;
    }
    if (has_device) {
        *target = device;
        blk = blk_by_name(device);
        if (!blk) {
            error_setg(errp, "No block backend named '%s'", device);
        }
        return blk;
    }
    if (has_id) {
        *target = id;
        blk = blk_by_qdev_id(id, NULL);
        if (!blk && id[0] != '/') {
            /* virtio-blk-pci's disk is its virtio-backend's (libvirt's) */
            g_autofree char *backend =
                g_strdup_printf("/machine/peripheral/%s/virtio-backend", id);
            blk = blk_by_qdev_id(backend, NULL);
        }
        if (!blk) {
            /* say why the id itself did not do */
            blk_by_qdev_id(id, errp);
        }
        return blk;
    }
    *target = export;
    exp = blk_exp_find(export);
    if (!exp) {
        error_setg(errp, "No block export with id '%s'", export);
        return NULL;
    }
    return exp->blk;
}

void qmp_block_io_trace_start(bool has_device, const char *device,
                              bool has_id, const char *id,
                              bool has_export, const char *export,
                              const char *filename, Error **errp)
{
    const char *target;
    BlockBackend *blk = block_io_trace_lookup(has_device, device, has_id, id,
                                              has_export, export, &target,
                                              errp);

    if (blk) {
        block_io_trace_start(blk, target, filename, errp);
    }
}

BlockIOTraceInfo *qmp_block_io_trace_stop(bool has_device, const char *device,
                                          bool has_id, const char *id,
                                          bool has_export, const char *export,
                                          Error **errp)
{
    const char *target = NULL;
    Error *local_err = NULL;
    BlockIOTraceInfo *info;
    BlockBackend *blk = block_io_trace_lookup(has_device, device, has_id, id,
                                              has_export, export, &target,
                                              &local_err);

    if (blk) {
        return block_io_trace_stop(blk, target, errp);
    }
    /* A device or export that is gone: its trace by the name it had */
    info = target ? block_io_trace_stop_target(target) : NULL;
    if (info) {
        error_free(local_err);
        return info;
    }
    error_propagate(errp, local_err);
    return NULL;
}

BlockIOTraceInfoList *qmp_query_block_io_traces(Error **errp)
{
    return block_io_trace_query();
}

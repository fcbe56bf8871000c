/*
 * sQemu: NFS mounts shared by the nfs nodes of one process
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Upstream's nfs driver gives every node a libnfs context of its own: a
 * mount of the image's directory and a TCP connection to the server.  A
 * chain of N layers on one server then holds N mounts and N connections
 * (libnfs binds them to reserved ports when run as root, of which there
 * are about 500: a chain of 1,000 layers could not be opened at all).
 * Here the nodes that name the same server, directory and context options
 * share one context: one mount and one connection, however many layers.
 *
 * Each node keeps its own file handle on the shared context.  Everything
 * that touches the context (submitting requests, servicing its socket,
 * the synchronous libnfs calls) holds the mount's lock, because the
 * nodes sharing it may run in different AioContexts (threads).  The
 * socket's handler lives in the AioContext of one attached node and
 * moves when the last node of that AioContext detaches; completions are
 * delivered to each request's own AioContext, as before.
 */

#ifndef BLOCK_NFS_MOUNT_H
#define BLOCK_NFS_MOUNT_H

#include "block/aio.h"
#include "qemu/queue.h"
#include <nfsc/libnfs.h>

typedef struct NFSMount NFSMount;

/*
 * What makes two nodes' contexts interchangeable: the server, the mounted
 * directory and every option that upstream sets on the context before
 * mounting.  An option not given is not set (libnfs's default).
 */
typedef struct NFSMountOptions {
    const char *host;
    const char *path;           /* the directory that is mounted */
    bool has_uid, has_gid, has_tcp_syncnt, has_debug;
    int64_t uid, gid, tcp_syncnt, debug;
    int64_t readahead;          /* bytes; 0: none */
    int64_t pagecache;          /* pages; 0: none */
} NFSMountOptions;

/* One node's hold on a mount */
typedef struct NFSMountUser {
    NFSMount *mount;
    AioContext *aio_context;    /* NULL while detached */
    QLIST_ENTRY(NFSMountUser) next;
} NFSMountUser;

/*
 * Hold the mount for @opts in @user, attached to @ctx: the one that is
 * there already, or a new one (mounted now, synchronously).  @share
 * false always makes a new mount that no other node shares.
 */
int nfs_mount_acquire(NFSMountUser *user, const NFSMountOptions *opts,
                      bool share, AioContext *ctx, Error **errp);
/* Drop @user's hold; the last one unmounts */
void nfs_mount_release(NFSMountUser *user);

/* The shared context; use it only between nfs_mount_lock() and _unlock() */
struct nfs_context *nfs_mount_context(NFSMountUser *user);
void nfs_mount_lock(NFSMountUser *user);
/* Re-arm the socket's handler for what libnfs waits for, then unlock */
void nfs_mount_unlock(NFSMountUser *user);

void nfs_mount_detach(NFSMountUser *user);
void nfs_mount_attach(NFSMountUser *user, AioContext *ctx);

/* How many nodes hold @user's mount (for tests and traces) */
unsigned nfs_mount_users(NFSMountUser *user);

#endif

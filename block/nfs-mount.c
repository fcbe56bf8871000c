/*
 * sQemu: NFS mounts shared by the nfs nodes of one process
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The mounts, their lock and their socket's handler; nfs.c keeps its
 * file handles and requests.  nfs-mount.h says why.
 */

#include "qemu/osdep.h"
#include <poll.h>
#include "qapi/error.h"
#include "qemu/main-loop.h"
#include "qemu/thread.h"
#include "trace.h"
#include "nfs-mount.h"

struct NFSMount {
    NFSMountOptions opts;       /* host and path are owned */
    bool shared;
    struct nfs_context *context;
    QemuMutex lock;
    /* Where the socket's handler is registered (NULL: nowhere) and for */
    AioContext *aio_context;
    int fd;
    int events;
    QLIST_HEAD(, NFSMountUser) users;
    QLIST_ENTRY(NFSMount) next;
};

/* Mounts are made and dropped in the main loop, while opening and closing */
static QLIST_HEAD(, NFSMount) nfs_mounts = QLIST_HEAD_INITIALIZER(nfs_mounts);

static void nfs_mount_update(NFSMount *m);

static void nfs_mount_process(NFSMount *m, int revents)
{
    qemu_mutex_lock(&m->lock);
    nfs_service(m->context, revents);
    nfs_mount_update(m);
    qemu_mutex_unlock(&m->lock);
}

static void nfs_mount_read(void *opaque)
{
    nfs_mount_process(opaque, POLLIN);
}

static void nfs_mount_write(void *opaque)
{
    nfs_mount_process(opaque, POLLOUT);
}

/* Called with the lock held */
static void nfs_mount_unregister(NFSMount *m)
{
    if (m->aio_context && m->events) {
        aio_set_fd_handler(m->aio_context, m->fd, false,
                           NULL, NULL, NULL, NULL, NULL);
    }
    m->events = 0;
}

/*
 * Register the socket's handler for what libnfs waits for now.  libnfs
 * replaces its socket when it reconnects, so the descriptor is checked
 * too.  Called with the lock held.
 */
static void nfs_mount_update(NFSMount *m)
{
    int fd = nfs_get_fd(m->context);
    int ev = m->aio_context ? nfs_which_events(m->context) : 0;

    if (fd != m->fd) {
        nfs_mount_unregister(m);
        m->fd = fd;
    }
    if (ev != m->events) {
        aio_set_fd_handler(m->aio_context, fd, false,
                           (ev & POLLIN) ? nfs_mount_read : NULL,
                           (ev & POLLOUT) ? nfs_mount_write : NULL,
                           NULL, NULL, m);
        m->events = ev;
    }
}

static bool nfs_mount_matches(NFSMount *m, const NFSMountOptions *o)
{
    const NFSMountOptions *p = &m->opts;

    return m->shared && !strcmp(p->host, o->host) &&
           !strcmp(p->path, o->path) &&
           p->has_uid == o->has_uid && (!o->has_uid || p->uid == o->uid) &&
           p->has_gid == o->has_gid && (!o->has_gid || p->gid == o->gid) &&
           p->has_tcp_syncnt == o->has_tcp_syncnt &&
           (!o->has_tcp_syncnt || p->tcp_syncnt == o->tcp_syncnt) &&
           p->has_debug == o->has_debug &&
           (!o->has_debug || p->debug == o->debug) &&
           p->readahead == o->readahead && p->pagecache == o->pagecache;
}

static void nfs_mount_free(NFSMount *m)
{
    if (m->context) {
        nfs_destroy_context(m->context);
    }
    qemu_mutex_destroy(&m->lock);
    g_free((char *)m->opts.host);
    g_free((char *)m->opts.path);
    g_free(m);
}

/* A new context with @o's options, mounted; not in the list yet */
static NFSMount *nfs_mount_new(const NFSMountOptions *o, bool share,
                               Error **errp)
{
    NFSMount *m = g_new0(NFSMount, 1);
    int ret;

    m->opts = *o;
    m->opts.host = g_strdup(o->host);
    m->opts.path = g_strdup(o->path);
    m->shared = share;
    m->fd = -1;
    qemu_mutex_init(&m->lock);
    QLIST_INIT(&m->users);

    m->context = nfs_init_context();
    if (!m->context) {
        error_setg(errp, "Failed to init NFS context");
        nfs_mount_free(m);
        return NULL;
    }
    if (o->has_uid) {
        nfs_set_uid(m->context, o->uid);
    }
    if (o->has_gid) {
        nfs_set_gid(m->context, o->gid);
    }
    if (o->has_tcp_syncnt) {
        nfs_set_tcp_syncnt(m->context, o->tcp_syncnt);
    }
#ifdef LIBNFS_FEATURE_READAHEAD
    if (o->readahead) {
        nfs_set_readahead(m->context, o->readahead);
#ifdef LIBNFS_FEATURE_PAGECACHE
        nfs_set_pagecache_ttl(m->context, 0);
#endif
    }
#endif
#ifdef LIBNFS_FEATURE_PAGECACHE
    if (o->pagecache) {
        nfs_set_pagecache(m->context, o->pagecache);
        nfs_set_pagecache_ttl(m->context, 0);
    }
#endif
#ifdef LIBNFS_FEATURE_DEBUG
    if (o->has_debug) {
        nfs_set_debug(m->context, o->debug);
    }
#endif

    ret = nfs_mount(m->context, o->host, o->path);
    if (ret < 0) {
        error_setg(errp, "Failed to mount nfs share: %s",
                   nfs_get_error(m->context));
        nfs_mount_free(m);
        return NULL;
    }
    trace_nfs_mount_new(m, o->host, o->path, share);
    return m;
}

int nfs_mount_acquire(NFSMountUser *user, const NFSMountOptions *opts,
                      bool share, AioContext *ctx, Error **errp)
{
    NFSMount *m = NULL;

    GLOBAL_STATE_CODE();

    if (share) {
        QLIST_FOREACH(m, &nfs_mounts, next) {
            if (nfs_mount_matches(m, opts)) {
                break;
            }
        }
    }
    if (!m) {
        m = nfs_mount_new(opts, share, errp);
        if (!m) {
            return -EINVAL;
        }
        QLIST_INSERT_HEAD(&nfs_mounts, m, next);
    }

    user->mount = m;
    user->aio_context = NULL;
    qemu_mutex_lock(&m->lock);
    QLIST_INSERT_HEAD(&m->users, user, next);
    qemu_mutex_unlock(&m->lock);
    trace_nfs_mount_acquire(m, user, nfs_mount_users(user));
    nfs_mount_attach(user, ctx);
    return 0;
}

void nfs_mount_release(NFSMountUser *user)
{
    NFSMount *m = user->mount;
    bool last;

    GLOBAL_STATE_CODE();

    if (!m) {
        return;
    }
    if (user->aio_context) {
        nfs_mount_detach(user);
    }
    qemu_mutex_lock(&m->lock);
    QLIST_REMOVE(user, next);
    last = QLIST_EMPTY(&m->users);
    qemu_mutex_unlock(&m->lock);
    user->mount = NULL;
    trace_nfs_mount_release(m, user, last);
    if (last) {
        QLIST_REMOVE(m, next);
#ifdef LIBNFS_FEATURE_UMOUNT
        nfs_umount(m->context);
#endif
        nfs_mount_free(m);
    }
}

struct nfs_context *nfs_mount_context(NFSMountUser *user)
{
    return user->mount->context;
}

void nfs_mount_lock(NFSMountUser *user)
{
    qemu_mutex_lock(&user->mount->lock);
}

void nfs_mount_unlock(NFSMountUser *user)
{
    nfs_mount_update(user->mount);
    qemu_mutex_unlock(&user->mount->lock);
}

void nfs_mount_attach(NFSMountUser *user, AioContext *ctx)
{
    NFSMount *m = user->mount;

    qemu_mutex_lock(&m->lock);
    user->aio_context = ctx;
    if (!m->aio_context) {
        m->aio_context = ctx;
        nfs_mount_update(m);
        trace_nfs_mount_handler(m, ctx);
    }
    qemu_mutex_unlock(&m->lock);
}

/*
 * When the last user in the AioContext that services the socket leaves
 * it, the handler moves to the AioContext of another attached user (or
 * nowhere, until one attaches).
 */
void nfs_mount_detach(NFSMountUser *user)
{
    NFSMount *m = user->mount;
    AioContext *old = user->aio_context;
    AioContext *next = NULL;
    NFSMountUser *u;

    qemu_mutex_lock(&m->lock);
    user->aio_context = NULL;
    if (old == m->aio_context) {
        QLIST_FOREACH(u, &m->users, next) {
            if (u->aio_context == old) {
                next = old;
                break;
            }
            next = next ?: u->aio_context;
        }
        if (next != old) {
            nfs_mount_unregister(m);
            m->aio_context = next;
            if (next) {
                nfs_mount_update(m);
            }
            trace_nfs_mount_handler(m, next);
        }
    }
    qemu_mutex_unlock(&m->lock);
}

unsigned nfs_mount_users(NFSMountUser *user)
{
    NFSMountUser *u;
    unsigned n = 0;

    QLIST_FOREACH(u, &user->mount->users, next) {
        n++;
    }
    return n;
}

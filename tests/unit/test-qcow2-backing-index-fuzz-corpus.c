/*
 * cmocka replay of the backing index fuzz corpus and crash inputs
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Runs every input of tests/unit/fuzz-qcow2-backing-index-corpus/ and
 * tests/unit/fuzz-qcow2-backing-index-crashes/ once through the libFuzzer
 * harness's checks (the harness is included below), one cmocka test per
 * input, so the regression inputs are checked without clang or libFuzzer.
 *
 * The inputs are looked up next to the harness source: build/src holds a
 * link to it, which is followed into the checkout, so an input added there
 * counts even before configure links it into build/src.  Set
 * SQEMU_FUZZ_INPUTS to a colon-separated list of files and directories to
 * replay those instead.
 */

#include "qemu/osdep.h"
#include <setjmp.h>
#include <cmocka.h>

/* A broken rule fails the current cmocka test instead of aborting */
#define FUZZ_ABORT() fail()
#include "fuzz-qcow2-backing-index.c"

/* SQEMU_FUZZ_DIR: the directory of the harness source, from meson */
#include "sqemu/fuzz-qcow2-backing-index-dir.h"

#define HARNESS_NAME    "fuzz-qcow2-backing-index.c"
#define CORPUS_NAME     "fuzz-qcow2-backing-index-corpus"
#define CRASHES_NAME    "fuzz-qcow2-backing-index-crashes"

typedef struct FuzzInput {
    char *path;
    char *name;         /* the test's name: directory/file */
} FuzzInput;

static void add_input(GPtrArray *inputs, const char *path)
{
    FuzzInput *in = g_new0(FuzzInput, 1);
    g_autofree char *dir = g_path_get_dirname(path);
    g_autofree char *dir_base = g_path_get_basename(dir);
    g_autofree char *base = g_path_get_basename(path);

    in->path = g_strdup(path);
    in->name = g_strdup_printf("%s/%s", dir_base, base);
    g_ptr_array_add(inputs, in);
}

static int compare_names(gconstpointer a, gconstpointer b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Every input file of @dir, sorted; READMEs and dot files are not inputs */
static void add_dir(GPtrArray *inputs, const char *dir)
{
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *name;
    guint i;

    if (!d) {
        return;
    }
    while ((name = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(dir, name, NULL);

        if (name[0] == '.' || g_str_has_prefix(name, "README") ||
            !g_file_test(path, G_FILE_TEST_IS_REGULAR)) {
            continue;
        }
        g_ptr_array_add(names, g_strdup(name));
    }
    g_dir_close(d);
    g_ptr_array_sort(names, compare_names);
    for (i = 0; i < names->len; i++) {
        g_autofree char *path = g_build_filename(dir, names->pdata[i], NULL);

        add_input(inputs, path);
    }
}

/* The directory that holds the harness, in the checkout if it is a link */
static char *fuzz_dir(void)
{
    g_autofree char *harness = g_build_filename(SQEMU_FUZZ_DIR, HARNESS_NAME,
                                                NULL);
    g_autofree char *real = realpath(harness, NULL);

    return real ? g_path_get_dirname(real) : g_strdup(SQEMU_FUZZ_DIR);
}

static GPtrArray *find_inputs(void)
{
    GPtrArray *inputs = g_ptr_array_new();
    const char *env = g_getenv("SQEMU_FUZZ_INPUTS");

    if (env && *env) {
        g_auto(GStrv) items = g_strsplit(env, ":", -1);
        char **p;

        for (p = items; *p; p++) {
            if (g_file_test(*p, G_FILE_TEST_IS_DIR)) {
                add_dir(inputs, *p);
            } else if (**p) {
                add_input(inputs, *p);
            }
        }
    } else {
        g_autofree char *dir = fuzz_dir();
        g_autofree char *corpus = g_build_filename(dir, CORPUS_NAME, NULL);
        g_autofree char *crashes = g_build_filename(dir, CRASHES_NAME, NULL);

        add_dir(inputs, corpus);
        add_dir(inputs, crashes);
    }
    return inputs;
}

static void test_input(void **state)
{
    const FuzzInput *in = *state;
    g_autoptr(GError) err = NULL;
    g_autofree char *data = NULL;
    gsize len;

    if (!g_file_get_contents(in->path, &data, &len, &err)) {
        fail_msg("%s", err->message);
    }
    LLVMFuzzerTestOneInput((const uint8_t *)data, len);
}

/* The corpus is there: a wrong path must not pass as "nothing to replay" */
static void test_corpus_found(void **state)
{
    const GPtrArray *inputs = *state;

    if (inputs->len == 0) {
        g_autofree char *dir = fuzz_dir();

        fail_msg("no inputs found under %s", dir);
    }
}

int main(void)
{
    GPtrArray *inputs = find_inputs();
    struct CMUnitTest *tests = g_new0(struct CMUnitTest, inputs->len + 1);
    guint i;
    int ret;

    tests[0].name = "corpus_found";
    tests[0].test_func = test_corpus_found;
    tests[0].initial_state = inputs;
    for (i = 0; i < inputs->len; i++) {
        FuzzInput *in = inputs->pdata[i];

        tests[i + 1].name = in->name;
        tests[i + 1].test_func = test_input;
        tests[i + 1].initial_state = in;
    }
    ret = _cmocka_run_group_tests("qcow2-backing-index-fuzz-corpus", tests,
                                  inputs->len + 1, NULL, NULL);
    for (i = 0; i < inputs->len; i++) {
        FuzzInput *in = inputs->pdata[i];

        g_free(in->path);
        g_free(in->name);
        g_free(in);
    }
    g_ptr_array_free(inputs, true);
    g_free(tests);
    return ret;
}

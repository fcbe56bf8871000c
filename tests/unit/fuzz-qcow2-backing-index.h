/*
 * libFuzzer harness for the sQemu backing index
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef TESTS_UNIT_FUZZ_QCOW2_BACKING_INDEX_H
#define TESTS_UNIT_FUZZ_QCOW2_BACKING_INDEX_H

/*
 * Check every rule of block/qcow2-backing-index.h on one input (see
 * fuzz-qcow2-backing-index.c).  Returns 0; a broken rule calls
 * FUZZ_ABORT(), abort() unless the includer of the .c file defines it.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif

# SPDX-License-Identifier: GPL-2.0-or-later
#
# sQemu's tooling: one module per job, run through the thin commands in
# scripts/sqemu/ (docs/sqemu.md, "The tooling package").

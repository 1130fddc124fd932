/**
 * @file vmm.h
 * @brief libvmm: an embeddable virtualization library for x86-64 Linux hosts.
 *
 * Include this header only. See README.md for an overview and docs/ for the design notes.
 */
#ifndef LIBVMM_VMM_H
#define LIBVMM_VMM_H

#include "common.h"
#include "error.h"
#include "cpu.h"
#include "exit.h"
#include "vm.h"
#include "vcpu.h"
#include "bus.h"
#include "loader.h"
#include "linux.h"
#include "devices.h"
#include "snapshot.h"
#include "guest/abi.h"

#endif /* LIBVMM_VMM_H */

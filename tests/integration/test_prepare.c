/* vmm_backend_prepare() on real backends:
 *   - bad counts and backends are refused; kvm has nothing to prepare (VMM_ENOSYS) or, without
 *     /dev/kvm, says what vmm_backend_probe() says;
 *   - bt: after preparing N, the first N vCPUs made while N VMs are kept at once take prepared
 *     memory (bt.reused_memory) and the next does not; with 0 prepared a destroyed vCPU's
 *     memory is not kept either;
 *   - pv: preparing N leaves N started sandbox processes, children of this one; N VMs made
 *     then start none, the next starts exactly one; destroying them fills the pool again,
 *     preparing 0 ends every waiting sandbox, and running out of descriptors part way is
 *     reported (VMM_ELIMIT) with the stubs started so far kept; with two kept, destroying one
 *     of two VMs starts its replacement and one more;
 *   - every VM made from prepared units runs the guest to its expected exit status.
 * usage: test_prepare --guest-dir DIR [--backend NAME]...   Exit 77 when no backend can run. */
#include <ctype.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <libvmm/vmm.h>

#include "itest.h"
#include "itest_check.h"

static const char *guest_dir = ".";

#define NKEEP 6

/* A VM with exitcode.elf loaded (it ends with status 42 through the exit hypercall). */
static vmm_vm_t *make_vm(vmm_backend_t b) {
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = b;
  cfg.ram_size = 16 << 20;
  vmm_vm_t *vm;
  if (vmm_vm_create(&cfg, &vm) != 0) return NULL;
  vmm_vcpu_t *v;
  char path[1024];
  snprintf(path, sizeof(path), "%s/exitcode.elf", guest_dir);
  vmm_image_info_t img;
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  if (vmm_vcpu_create(vm, 0, &v) || vmm_load_file(vm, path, 0, 0, &img)) {
    vmm_vm_destroy(vm);
    return NULL;
  }
  lm.entry = img.entry;
  lm.cpl = 3;
  if (vmm_vcpu_setup_long_mode(v, &lm) != 0) {
    vmm_vm_destroy(vm);
    return NULL;
  }
  return vm;
}

static int64_t run(vmm_vm_t *vm) {
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  for (int n = 0; n < 1000; n++) {
    if (vmm_vcpu_run(vmm_vm_vcpu(vm, 0), &e) != 0) return -1;
    if (e.reason == VMM_EXIT_GUEST_EXIT) return e.guest_exit.status;
    if (e.reason != VMM_EXIT_IO && e.reason != VMM_EXIT_MMIO) return -1;
  }
  return -1;
}

static int64_t stat_of(vmm_vm_t *vm, const char *name) {
  vmm_stat_t st[64];
  size_t n = 0;
  if (vmm_vcpu_stats(vmm_vm_vcpu(vm, 0), st, 64, &n) != 0) return -1;
  for (size_t i = 0; i < n && i < 64; i++)
    if (strcmp(st[i].name, name) == 0) return (int64_t)st[i].value;
  return -1;
}

/* Live (not zombie) sandbox processes that are children of this process, from /proc/PID/stat
 * (other children, inherited across an exec or a wrapper's, are not counted). */
static int children(void) {
  DIR *d = opendir("/proc");
  if (d == NULL) return -1;
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (!isdigit((unsigned char)de->d_name[0])) continue;
    char path[300], buf[512];
    snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
    FILE *f = fopen(path, "re");
    if (f == NULL) continue;
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = 0;
    char *p = strrchr(buf, ')');
    char state;
    int ppid;
    if (p && strstr(buf, "(libvmm-pv-stub)") == strchr(buf, '(') &&
        sscanf(p + 1, " %c %d", &state, &ppid) == 2 && ppid == (int)getpid() && state != 'Z')
      n++;
  }
  closedir(d);
  return n;
}

/* The RLIMIT_NOFILE that leaves exactly `spare` descriptors free (new ones take the lowest
 * free numbers, and may not reach the limit), or -1. */
static int limit_leaving(int spare) {
  static unsigned char used[65536];
  memset(used, 0, sizeof(used));
  DIR *d = opendir("/proc/self/fd");
  if (d == NULL) return -1;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    int fd = atoi(de->d_name);
    if (isdigit((unsigned char)de->d_name[0]) && fd < (int)sizeof(used)) used[fd] = 1;
  }
  int own = dirfd(d);
  closedir(d);
  if (own >= 0 && own < (int)sizeof(used)) used[own] = 0; /* Free again. */
  for (int fd = 0, free_seen = 0; fd < (int)sizeof(used); fd++)
    if (!used[fd] && ++free_seen == spare) return fd + 1;
  return -1;
}

static void check_runs(vmm_vm_t **vms, int n, const char *bn) {
  int ok = 0;
  for (int i = 0; i < n; i++) ok += vms[i] && run(vms[i]) == 42;
  CHECK(ok == n, "%s: %d of %d VMs made from prepared units ran to status 42", bn, ok, n);
}

static void test_bt(void) {
  int before = failures;
  int rc = vmm_backend_prepare(VMM_BACKEND_BT, NKEEP);
  CHECK(rc == 0, "bt: prepare %d: %s", NKEEP, vmm_strerror(rc));
  vmm_vm_t *vms[NKEEP + 1] = {0};
  int reused = 0;
  for (int i = 0; i <= NKEEP; i++) {
    vms[i] = make_vm(VMM_BACKEND_BT);
    CHECK(vms[i] != NULL, "bt: VM %d setup", i);
    if (vms[i] && i < NKEEP) reused += stat_of(vms[i], "bt.reused_memory") == 1;
  }
  CHECK(reused == NKEEP, "bt: %d of the first %d vCPUs took prepared memory", reused, NKEEP);
  CHECK(vms[NKEEP] && stat_of(vms[NKEEP], "bt.reused_memory") == 0,
        "bt: vCPU %d found prepared memory beyond the %d prepared", NKEEP, NKEEP);
  check_runs(vms, NKEEP + 1, "bt");
  for (int i = 0; i <= NKEEP; i++) vmm_vm_destroy(vms[i]);
  /* The destroyed vCPUs' memory is kept (up to NKEEP): the next VM takes some. */
  vmm_vm_t *vm = make_vm(VMM_BACKEND_BT);
  CHECK(vm && stat_of(vm, "bt.reused_memory") == 1, "bt: a destroyed vCPU's memory was not kept");
  vmm_vm_destroy(vm);
  rc = vmm_backend_prepare(VMM_BACKEND_BT, 0);
  CHECK(rc == 0, "bt: prepare 0: %s", vmm_strerror(rc));
  for (int k = 0; k < 2; k++) {
    vm = make_vm(VMM_BACKEND_BT);
    CHECK(vm && stat_of(vm, "bt.reused_memory") == 0 && run(vm) == 42,
          "bt: with none prepared, VM %d took kept memory or did not run", k);
    vmm_vm_destroy(vm);
  }
  CHECK(vmm_backend_prepare(VMM_BACKEND_BT, 4) == 0, "bt: prepare 4");
  if (failures == before)
    printf("PASS bt: %d prepared vCPU memory sets taken, not one more; none kept after prepare 0\n",
         NKEEP);
}

static void test_pv(void) {
  int before = failures;
  int rc = vmm_backend_prepare(VMM_BACKEND_PV, NKEEP);
  CHECK(rc == 0, "pv: prepare %d: %s", NKEEP, vmm_strerror(rc));
  int c0 = children();
  CHECK(c0 == NKEEP, "pv: %d child processes after preparing %d sandboxes", c0, NKEEP);
  vmm_vm_t *vms[NKEEP + 1] = {0};
  for (int i = 0; i < NKEEP; i++) {
    vms[i] = make_vm(VMM_BACKEND_PV);
    CHECK(vms[i] != NULL, "pv: VM %d setup", i);
  }
  int c1 = children();
  CHECK(c1 == NKEEP, "pv: %d VMs made from %d prepared sandboxes, %d processes (none should start)",
        NKEEP, NKEEP, c1);
  vms[NKEEP] = make_vm(VMM_BACKEND_PV);
  CHECK(vms[NKEEP] != NULL, "pv: VM %d setup", NKEEP);
  int c2 = children();
  CHECK(c2 == NKEEP + 1, "pv: one VM past the prepared ones: %d processes, want %d", c2, NKEEP + 1);
  check_runs(vms, NKEEP + 1, "pv");
  for (int i = 0; i <= NKEEP; i++) vmm_vm_destroy(vms[i]);
  int c3 = children();
  CHECK(c3 == NKEEP, "pv: after the VMs went, %d waiting sandboxes, want %d", c3, NKEEP);
  rc = vmm_backend_prepare(VMM_BACKEND_PV, 0);
  int c4 = children();
  CHECK(rc == 0 && c4 == 0, "pv: prepare 0: %s, %d processes left", vmm_strerror(rc), c4);
  vmm_vm_t *vm = make_vm(VMM_BACKEND_PV);
  CHECK(vm && run(vm) == 42, "pv: a VM with none prepared did not run");
  vmm_vm_destroy(vm);
  CHECK(children() == 0, "pv: with none prepared, a destroyed VM left a sandbox waiting");
  /* With two kept: two VMs take both; destroying one starts its replacement and one more, so
   * the next clone takes a stub that had time to start. */
  rc = vmm_backend_prepare(VMM_BACKEND_PV, 2);
  vmm_vm_t *a = make_vm(VMM_BACKEND_PV), *b2 = make_vm(VMM_BACKEND_PV);
  int before_destroy = children();
  vmm_vm_destroy(a);
  int after_destroy = children();
  CHECK(rc == 0 && a && b2 && before_destroy == 2 && after_destroy == 3,
        "pv: two kept, two VMs, one destroyed: %d then %d processes (want 2, then 1 + 2 waiting)",
        before_destroy, after_destroy);
  vmm_vm_destroy(b2);
  vmm_backend_prepare(VMM_BACKEND_PV, 0);
  /* Out of file descriptors part way (each waiting stub keeps a socket here): the call says
   * so, and the stubs it started stay. */
  struct rlimit old;
  int lim = limit_leaving(6);
  if (getrlimit(RLIMIT_NOFILE, &old) == 0 && lim > 0) {
    struct rlimit low = old;
    low.rlim_cur = (rlim_t)lim;
    setrlimit(RLIMIT_NOFILE, &low);
    rc = vmm_backend_prepare(VMM_BACKEND_PV, 20);
    setrlimit(RLIMIT_NOFILE, &old);
    int kept = children();
    CHECK(rc == VMM_ELIMIT && kept >= 1 && kept < 20,
          "pv: prepare 20 with 6 descriptors to spare: %s, %d sandboxes (want VMM_ELIMIT, 1-19)",
          vmm_strerror(rc), kept);
  }
  CHECK(vmm_backend_prepare(VMM_BACKEND_PV, 2) == 0, "pv: prepare 2");
  if (failures == before)
    printf("PASS pv: %d prepared sandboxes taken without a start, one started past them, none "
         "left after prepare 0\n", NKEEP);
}

int main(int argc, char **argv) {
  vmm_backend_t want[3];
  int nwant;
  if (itest_args(argc, argv, &guest_dir, want, &nwant, NULL)) return 2;
  setvbuf(stdout, NULL, _IONBF, 0);
  CHECK(vmm_backend_prepare(VMM_BACKEND_AUTO, 65) == VMM_EINVAL, "count 65 accepted");
  CHECK(vmm_backend_prepare((vmm_backend_t)7, 1) == VMM_EINVAL, "backend 7 accepted");
  /* AUTO is the backend vmm_vm_create() would pick: kvm (nothing to prepare) where it runs. */
  int auto_rc = vmm_backend_prepare(VMM_BACKEND_AUTO, 4);
  int kvm_probe = vmm_backend_probe(VMM_BACKEND_KVM);
  CHECK(auto_rc == (kvm_probe == 0 ? VMM_ENOSYS : vmm_backend_probe(VMM_BACKEND_AUTO)),
        "auto: prepare 4 gave %s", vmm_strerror(auto_rc));
  int ran = 0;
  for (int i = 0; i < nwant; i++) {
    vmm_backend_t b = want[i];
    int probe = vmm_backend_probe(b);
    if (b == VMM_BACKEND_KVM) {
      int rc = vmm_backend_prepare(b, 1);
      bool ok = rc == (probe == 0 ? VMM_ENOSYS : probe);
      CHECK(ok, "kvm: prepare gave %s (probe: %s)", vmm_strerror(rc), vmm_strerror(probe));
      if (ok) printf("PASS kvm: prepare says %s\n", vmm_strerror(rc));
      ran += probe == 0;
      continue;
    }
    if (probe != 0) {
      printf("SKIP %s: %s\n", vmm_backend_name(b), vmm_strerror(probe));
      continue;
    }
    ran++;
    if (b == VMM_BACKEND_BT) test_bt();
    if (b == VMM_BACKEND_PV) test_pv();
  }
  if (ran == 0) {
    printf("SKIP: no requested backend can run here\n");
    return failures ? 1 : 77;
  }
  return failures ? 1 : 0;
}

/* pv backend: the sandbox processes. Finding and starting the stub, a small pool of started
 * stubs (so that a VM's first instruction does not wait for an exec), handing one to the thread
 * that runs a vCPU, and killing it. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pv.h"
#include "pv_proto.h"

#define VMM_PV_STUB_NAME "libvmm-pv-stub"
#define VMM_PV_POOL_MAX 8

struct vmm_pv_idle {
  pid_t pid;
  int sock;
};

static pthread_mutex_t vmm_pv_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vmm_pv_idle vmm_pv_pool[VMM_PV_POOL_MAX];
static int vmm_pv_pool_n;
static int vmm_pv_pool_target = 2;

static pthread_once_t vmm_pv_once = PTHREAD_ONCE_INIT;
static char vmm_pv_stub[PATH_MAX];
static uint64_t vmm_pv_floor = 0x10000;

static bool vmm_pv_try_path(const char *path) {
  if (strlen(path) >= sizeof(vmm_pv_stub) || access(path, X_OK) != 0) return false;
  memcpy(vmm_pv_stub, path, strlen(path) + 1);
  return true;
}

/* The stub: $LIBVMM_PV_STUB, next to the loaded libvmm (build tree and installs that keep it
 * beside the library), the install path, then the build tree. */
static void vmm_pv_init_once(void) {
  const char *env = getenv("LIBVMM_PV_STUB");
  const char *pool = getenv("LIBVMM_PV_POOL");
  if (pool) {
    int n = atoi(pool);
    vmm_pv_pool_target = n < 0 ? 0 : n > VMM_PV_POOL_MAX ? VMM_PV_POOL_MAX : n;
  }
  FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "re");
  if (f) {
    unsigned long long v;
    if (fscanf(f, "%llu", &v) == 1) vmm_pv_floor = (v + VMM_PAGE_SIZE - 1) & ~(VMM_PAGE_SIZE - 1);
    fclose(f);
  }
  if (env && env[0]) {
    snprintf(vmm_pv_stub, sizeof(vmm_pv_stub), "%s", env);
    return;
  }
  Dl_info info;
  if (dladdr((void *)&vmm__pv_ops, &info) && info.dli_fname) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", info.dli_fname);
    char *slash = strrchr(dir, '/');
    if (slash) {
      *slash = '\0';
      char path[PATH_MAX + 32];
      snprintf(path, sizeof(path), "%s/%s", dir, VMM_PV_STUB_NAME);
      if (vmm_pv_try_path(path)) return;
    }
  }
#ifdef VMM_PV_STUB_INSTALL_PATH
  if (vmm_pv_try_path(VMM_PV_STUB_INSTALL_PATH)) return;
#endif
#ifdef VMM_PV_STUB_BUILD_PATH
  if (vmm_pv_try_path(VMM_PV_STUB_BUILD_PATH)) return;
#endif
  vmm_pv_stub[0] = '\0';
}

uint64_t vmm__pv_map_floor(void) {
  pthread_once(&vmm_pv_once, vmm_pv_init_once);
  return vmm_pv_floor;
}

int vmm__pv_wait(pid_t pid, int *status) {
  for (;;) {
    pid_t r = waitpid(pid, status, __WALL);
    if (r == pid) return 0;
    if (r < 0 && errno == EINTR) continue;
    return r < 0 ? -errno : -ECHILD;
  }
}

static void vmm_pv_reap(pid_t pid) {
  int st;
  kill(pid, SIGKILL);
  /* A traced child reports stops before its death; wait for the death. */
  while (vmm__pv_wait(pid, &st) == 0 && !WIFEXITED(st) && !WIFSIGNALED(st)) {
  }
}

static int vmm_pv_spawn(struct vmm_pv_idle *out) {
  if (vmm_pv_stub[0] == '\0') {
    VMM_LOG_E("pv: sandbox stub %s not found (set LIBVMM_PV_STUB)", VMM_PV_STUB_NAME);
    return VMM_ENODEV;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    VMM_LOG_E("pv: socketpair: %s", strerror(errno));
    return vmm__from_errno(errno);
  }
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_adddup2(&fa, sv[1], VMM_PV_STUB_FD);
  posix_spawn_file_actions_addclosefrom_np(&fa, VMM_PV_STUB_FD + 1);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETSID);
  char *argv[] = {(char *)VMM_PV_STUB_NAME, NULL};
  char *envp[] = {NULL};
  pid_t pid;
  int rc = posix_spawn(&pid, vmm_pv_stub, &fa, &attr, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close(sv[1]);
  if (rc != 0) {
    close(sv[0]);
    VMM_LOG_E("pv: cannot start sandbox stub %s: %s", vmm_pv_stub, strerror(rc));
    return VMM_EBACKEND;
  }
  out->pid = pid;
  out->sock = sv[0];
  return 0;
}

static void vmm_pv_idle_discard(struct vmm_pv_idle *c) {
  close(c->sock);
  vmm_pv_reap(c->pid);
}

void vmm__pv_pool_refill(void) {
  pthread_once(&vmm_pv_once, vmm_pv_init_once);
  for (;;) {
    pthread_mutex_lock(&vmm_pv_pool_lock);
    bool full = vmm_pv_pool_n >= vmm_pv_pool_target;
    pthread_mutex_unlock(&vmm_pv_pool_lock);
    if (full) return;
    struct vmm_pv_idle c;
    if (vmm_pv_spawn(&c) != 0) return;
    pthread_mutex_lock(&vmm_pv_pool_lock);
    if (vmm_pv_pool_n < vmm_pv_pool_target) {
      vmm_pv_pool[vmm_pv_pool_n++] = c;
      c.pid = 0;
    }
    pthread_mutex_unlock(&vmm_pv_pool_lock);
    if (c.pid) {
      vmm_pv_idle_discard(&c);
      return;
    }
  }
}

static int vmm_pv_take(struct vmm_pv_idle *out) {
  pthread_mutex_lock(&vmm_pv_pool_lock);
  bool got = vmm_pv_pool_n > 0;
  if (got) *out = vmm_pv_pool[--vmm_pv_pool_n];
  pthread_mutex_unlock(&vmm_pv_pool_lock);
  return got ? 0 : vmm_pv_spawn(out);
}

/* Probing starts a stub and seizes it: that is what fails where ptrace or exec is denied. The
 * probe stub is thrown away. */
int vmm__pv_sandbox_probe(void) {
  static atomic_int result = 1; /* 1: not probed yet. */
  int r = atomic_load(&result);
  if (r != 1) return r;
  pthread_once(&vmm_pv_once, vmm_pv_init_once);
  if (vmm_pv_stub[0] == '\0') {
    VMM_LOG_I("pv: sandbox stub %s not found (set LIBVMM_PV_STUB)", VMM_PV_STUB_NAME);
    atomic_store(&result, VMM_ENODEV);
    return VMM_ENODEV;
  }
  struct vmm_pv_idle c;
  r = vmm_pv_spawn(&c);
  if (r != 0) {
    r = VMM_ENODEV;
  } else if (ptrace(PTRACE_SEIZE, c.pid, 0, 0) != 0) {
    VMM_LOG_I("pv: ptrace is not permitted here: %s", strerror(errno));
    vmm_pv_idle_discard(&c);
    r = VMM_ENODEV;
  } else {
    /* A seized stub cannot be handed to another thread cheaply; this one is only a probe. */
    vmm_pv_idle_discard(&c);
    r = 0;
  }
  atomic_store(&result, r);
  return r;
}

static const char *vmm_pv_stub_status(int code) {
  switch (code) {
    case VMM_PV_STUB_EXIT_SETUP: return "prctl, setrlimit or seccomp refused";
    case VMM_PV_STUB_EXIT_MSG: return "malformed setup message";
    case VMM_PV_STUB_EXIT_MAP: return "guest RAM could not be mapped at its guest-physical address";
    case VMM_PV_STUB_EXIT_EOF: return "control socket closed";
    default: return "unexpected exit";
  }
}

/* Sends the RAM map and the go-ahead in one message, with the memfds attached. */
static int vmm_pv_send_maps(vmm_vm_t *vm, int sock) {
  static const size_t hdr = offsetof(struct vmm_pv_msg, maps);
  struct vmm_pv_msg msg;
  int fds[VMM_PV_MAX_MAPS];
  memset(&msg, 0, hdr);
  msg.magic = VMM_PV_MSG_MAGIC;
  uint64_t floor = vmm__pv_map_floor();
  for (size_t i = 0; i < vm->nregions; i++) {
    struct vmm_region *r = vm->regions[i];
    uint64_t lo = r->gpa > floor ? r->gpa : floor, hi = r->gpa + r->size;
    if (hi <= lo) continue;
    struct vmm_pv_map *m = &msg.maps[msg.count];
    m->addr = lo;
    m->len = hi - lo;
    m->offset = lo - r->gpa;
    m->prot = PROT_READ | PROT_EXEC | ((r->flags & VMM_MEM_READONLY) ? 0 : PROT_WRITE);
    m->reserved = 0;
    fds[msg.count++] = r->memfd;
  }
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(fds))];
  } ctl;
  struct iovec iov = {&msg, hdr + msg.count * sizeof(msg.maps[0])};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  if (msg.count) {
    memset(&ctl, 0, sizeof(ctl));
    mh.msg_control = ctl.buf;
    mh.msg_controllen = CMSG_SPACE(msg.count * sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(msg.count * sizeof(int));
    memcpy(CMSG_DATA(c), fds, msg.count * sizeof(int));
  }
  ssize_t n;
  do {
    n = sendmsg(sock, &mh, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n == (ssize_t)iov.iov_len ? 0 : -1;
}

/* Takes an idle stub, makes the calling thread its tracer, maps guest RAM and waits for it to
 * stop at its final int3. The caller then loads the guest's registers. */
int vmm__pv_child_start(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  vmm_vm_t *vm = vcpu->vm;
  for (int attempt = 0; attempt < 3; attempt++) {
    struct vmm_pv_idle c;
    int rc = vmm_pv_take(&c);
    if (rc != 0) return rc;
    if (ptrace(PTRACE_SEIZE, c.pid, 0, PTRACE_O_EXITKILL | PTRACE_O_TRACESYSGOOD) != 0) {
      VMM_LOG_W("pv: cannot seize sandbox %d: %s", (int)c.pid, strerror(errno));
      vmm_pv_idle_discard(&c);
      continue;
    }
    if (vmm_pv_send_maps(vm, c.sock) != 0) {
      VMM_LOG_W("pv: sandbox %d did not take its setup message: %s", (int)c.pid, strerror(errno));
      vmm_pv_idle_discard(&c);
      continue;
    }
    close(c.sock);
    int st;
    if (vmm__pv_wait(c.pid, &st) != 0) {
      VMM_LOG_E("pv: lost sandbox %d while it started", (int)c.pid);
      return VMM_EBACKEND;
    }
    if (WIFSTOPPED(st) && WSTOPSIG(st) == SIGTRAP && (st >> 16) == 0) {
      pv->pid = c.pid;
      pv->tracer = (pid_t)syscall(SYS_gettid);
      pv->pinned_cpu = -1;
      int fd = (int)syscall(SYS_pidfd_open, c.pid, 0);
      atomic_store(&pv->pidfd, fd);
      pv->stat_spawns++;
      return 0;
    }
    if (WIFEXITED(st)) {
      VMM_LOG_E("pv: sandbox %d could not start: %s (status %d)", (int)c.pid,
                vmm_pv_stub_status(WEXITSTATUS(st)), WEXITSTATUS(st));
      return VMM_EBACKEND;
    }
    if (WIFSIGNALED(st)) {
      VMM_LOG_W("pv: sandbox %d died while starting: signal %d (%s)", (int)c.pid, WTERMSIG(st),
                strsignal(WTERMSIG(st)));
      continue;
    }
    VMM_LOG_E("pv: sandbox %d stopped with signal %d (%s) while starting", (int)c.pid,
              WSTOPSIG(st), strsignal(WSTOPSIG(st) & 0x7f));
    vmm_pv_reap(c.pid);
    return VMM_EBACKEND;
  }
  VMM_LOG_E("pv: no sandbox process could be started");
  return VMM_EBACKEND;
}

void vmm__pv_child_kill(struct vmm_pv_vcpu *pv) {
  int fd = atomic_exchange(&pv->pidfd, -1);
  if (pv->pid > 0) vmm_pv_reap(pv->pid);
  if (fd >= 0) close(fd);
  pv->pid = -1;
  pv->live = false;
  pv->have_ur = false;
  pv->ur_dirty = false;
}

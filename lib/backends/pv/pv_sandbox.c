/* pv backend: the sandbox processes. Finding the stub, a small pool of started stubs (so that
 * a VM's first instruction does not wait for an exec), handing one to a vCPU (seized by the
 * thread that runs it, with guest RAM mapped), and killing it. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pv.h"
#include "pv_proto.h"

#define VMM_PV_STUB_NAME "libvmm-pv-stub"

struct vmm_pv_idle {
  pid_t pid;
  int sock;
};

static pthread_mutex_t vmm_pv_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vmm_pv_idle vmm_pv_pool[VMM__PREPARE_MAX];
static int vmm_pv_pool_n;
static int vmm_pv_pool_target = 2;

static pthread_once_t vmm_pv_once = PTHREAD_ONCE_INIT;
/* Whether stubs ask for RDTSC to fault (see vmm_pv_tsc_decide). */
static bool vmm_pv_trap_tsc = true;
static char vmm_pv_stub[PATH_MAX];
static uint64_t vmm_pv_floor = 0x10000;

static bool vmm_pv_try_path(const char *path) {
  if (strlen(path) >= sizeof(vmm_pv_stub) || access(path, X_OK) != 0) return false;
  memcpy(vmm_pv_stub, path, strlen(path) + 1);
  return true;
}

/* The stub: $LIBVMM_PV_STUB, next to the loaded libvmm (the build tree), in libexec relative
 * to it (relocated installs), the configured install path, then the build tree. */
static void vmm_pv_find_stub(void) {
  const char *env = getenv("LIBVMM_PV_STUB");
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
      char path[PATH_MAX + 64];
      snprintf(path, sizeof(path), "%s/%s", dir, VMM_PV_STUB_NAME);
      if (vmm_pv_try_path(path)) return;
#ifdef VMM_PV_STUB_REL_PATH
      snprintf(path, sizeof(path), "%s/%s", dir, VMM_PV_STUB_REL_PATH);
      if (vmm_pv_try_path(path)) return;
#endif
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

static void vmm_pv_tsc_decide(void);

/* poll() for input on fd for up to ms milliseconds: >0 readable, 0 timed out, <0 error. */
static int vmm_pv_wait_readable(int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r;
  do {
    r = poll(&p, 1, ms);
  } while (r < 0 && errno == EINTR);
  return r;
}

static void vmm_pv_init_once(void) {
  const char *pool = getenv("LIBVMM_PV_POOL");
  if (pool) {
    int n = atoi(pool);
    vmm_pv_pool_target = n < 0 ? 0 : n > VMM__PREPARE_MAX ? VMM__PREPARE_MAX : n;
  }
  FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "re");
  if (f) {
    unsigned long long v;
    if (fscanf(f, "%llu", &v) == 1) vmm_pv_floor = (v + VMM_PAGE_SIZE - 1) & ~(VMM_PAGE_SIZE - 1);
    fclose(f);
  }
  vmm_pv_find_stub();
  if (vmm_pv_stub[0] && access(vmm_pv_stub, X_OK) == 0) vmm_pv_tsc_decide();
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

static int vmm_pv_spawn_argv(char *const argv[], int sock, pid_t *pid) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  if (sock >= 0) posix_spawn_file_actions_adddup2(&fa, sock, VMM_PV_STUB_FD);
  posix_spawn_file_actions_addclosefrom_np(&fa, sock >= 0 ? VMM_PV_STUB_FD + 1 : VMM_PV_STUB_FD);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETSID);
  char *envp[] = {NULL};
  int rc = posix_spawn(pid, vmm_pv_stub, &fa, &attr, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  return rc;
}

/* RDTSC is made to fault with PR_SET_TSC where the host honours it. Some virtualized hosts
 * accept the request and still let RDTSC run, while the CR4 write it causes at every switch to
 * and from the sandbox costs microseconds; there pv does not ask. LIBVMM_PV_TSC=trap or
 * native overrides the test. */
static void vmm_pv_tsc_decide(void) {
  const char *env = getenv("LIBVMM_PV_TSC");
  if (env && strcmp(env, "trap") == 0) return;
  if (env && strcmp(env, "native") == 0) {
    vmm_pv_trap_tsc = false;
    return;
  }
  char *argv[] = {(char *)VMM_PV_STUB_NAME, (char *)VMM_PV_STUB_ARG_TSC_TEST, NULL};
  pid_t pid;
  int st;
  if (vmm_pv_spawn_argv(argv, -1, &pid) != 0) return;
  /* It ends within microseconds; one that does not (stopped, stuck) is killed after 5 s. */
  int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pfd >= 0) {
    int pr = vmm_pv_wait_readable(pfd, 5000);
    close(pfd);
    if (pr == 0) {
      VMM_LOG_W("pv: the RDTSC test stub did not finish; assuming RDTSC can be made to fault");
      vmm_pv_reap(pid);
      return;
    }
  }
  if (vmm__pv_wait(pid, &st) != 0) return;
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
    vmm_pv_trap_tsc = false;
    VMM_LOG_I("pv: this host does not make RDTSC fault (PR_SET_TSC has no effect): pv guests "
              "read the host TSC");
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
  char *argv[] = {(char *)VMM_PV_STUB_NAME,
                  (char *)(vmm_pv_trap_tsc ? VMM_PV_STUB_ARG_TSC : VMM_PV_STUB_ARG_NOTSC), NULL};
  pid_t pid;
  int rc = vmm_pv_spawn_argv(argv, sv[1], &pid);
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

static atomic_bool vmm_pv_dirty_ok;
static atomic_uint_fast64_t vmm_pv_next_token = 1;
static __thread uint64_t vmm_pv_token;

uint64_t vmm__pv_thread_token(void) {
  if (vmm_pv_token == 0) vmm_pv_token = atomic_fetch_add(&vmm_pv_next_token, 1);
  return vmm_pv_token;
}

bool vmm__pv_dirty_supported(void) { return atomic_load(&vmm_pv_dirty_ok); }

/* The stub's first message: its userfaultfd, or none. Returns the fd, -1 without one, or -2
 * when the stub is gone or silent: a stub stopped or stuck before it speaks must not hang the
 * VMM (it sends its hello within microseconds of starting; the wait allows for loaded hosts). */
static int vmm_pv_recv_hello(int sock) {
  if (vmm_pv_wait_readable(sock, 5000) <= 0) return -2;
  struct vmm_pv_hello hello;
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int))];
  } ctl;
  struct iovec iov = {&hello, sizeof(hello)};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                      .msg_controllen = sizeof(ctl.buf)};
  ssize_t n;
  do {
    n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n != (ssize_t)sizeof(hello) || hello.magic != VMM_PV_HELLO_MAGIC) return -2;
  int fd = -1;
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  if (hello.has_uffd && c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
      c->cmsg_len == CMSG_LEN(sizeof(int)))
    memcpy(&fd, CMSG_DATA(c), sizeof(int));
  return fd;
}

static void vmm_pv_idle_discard(struct vmm_pv_idle *c) {
  close(c->sock);
  vmm_pv_reap(c->pid);
}

int vmm__pv_pool_refill(int upto, int max_new) {
  pthread_once(&vmm_pv_once, vmm_pv_init_once);
  for (int made = 0; made < max_new; made++) {
    pthread_mutex_lock(&vmm_pv_pool_lock);
    bool full = vmm_pv_pool_n >= vmm_pv_pool_target || vmm_pv_pool_n >= upto;
    pthread_mutex_unlock(&vmm_pv_pool_lock);
    if (full) return 0;
    struct vmm_pv_idle c;
    int rc = vmm_pv_spawn(&c);
    if (rc != 0) return rc;
    pthread_mutex_lock(&vmm_pv_pool_lock);
    if (vmm_pv_pool_n < vmm_pv_pool_target) {
      vmm_pv_pool[vmm_pv_pool_n++] = c;
      c.pid = 0;
    }
    pthread_mutex_unlock(&vmm_pv_pool_lock);
    if (c.pid) {
      vmm_pv_idle_discard(&c);
      return 0;
    }
  }
  return 0;
}

int vmm__pv_pool_prepare(unsigned count) {
  pthread_once(&vmm_pv_once, vmm_pv_init_once);
  struct vmm_pv_idle drop[VMM__PREPARE_MAX];
  int ndrop = 0;
  pthread_mutex_lock(&vmm_pv_pool_lock);
  vmm_pv_pool_target = (int)count;
  while (vmm_pv_pool_n > vmm_pv_pool_target) drop[ndrop++] = vmm_pv_pool[--vmm_pv_pool_n];
  pthread_mutex_unlock(&vmm_pv_pool_lock);
  for (int i = 0; i < ndrop; i++) vmm_pv_idle_discard(&drop[i]);
  return vmm__pv_pool_refill(VMM__PREPARE_MAX, VMM__PREPARE_MAX);
}

/* The oldest stub first: it had the longest to start (a refill's exec runs while the caller
 * goes on; the newest may not have spoken yet). */
static int vmm_pv_take(struct vmm_pv_idle *out) {
  pthread_mutex_lock(&vmm_pv_pool_lock);
  bool got = vmm_pv_pool_n > 0;
  if (got) {
    *out = vmm_pv_pool[0];
    memmove(vmm_pv_pool, vmm_pv_pool + 1, (size_t)--vmm_pv_pool_n * sizeof(vmm_pv_pool[0]));
  }
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
    /* Dirty logging needs userfaultfd write-protection of shared memory (Linux 6.4). */
    int uffd = vmm_pv_recv_hello(c.sock);
    if (uffd >= 0) {
      struct uffdio_api api = {.api = UFFD_API, .features = vmm__pv_uffd_features()};
      atomic_store(&vmm_pv_dirty_ok, ioctl(uffd, UFFDIO_API, &api) == 0);
      close(uffd);
    }
    if (!atomic_load(&vmm_pv_dirty_ok))
      VMM_LOG_I("pv: no userfaultfd write-protection of shared memory here: no dirty logging");
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
    m->flags = 0;
    fds[msg.count++] = r->memfd;
    if (r->layered) {
      /* A clone's RAM: the shared base, read-only; the tracer maps the clone's own pages over
       * it from the kept fd before the guest runs (pv_layer.c). */
      m->prot &= ~(uint32_t)PROT_WRITE;
      fds[msg.count - 1] = r->base_fd;
      struct vmm_pv_map *k = &msg.maps[msg.count];
      memset(k, 0, sizeof(*k));
      k->addr = VMM_PV_KEEP_FD_BASE + i;
      k->flags = VMM_PV_MAP_KEEP_FD;
      fds[msg.count++] = r->memfd;
    }
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

/* Takes an idle stub, makes the calling thread its tracer and sends it the RAM map; the stub
 * maps it while the caller goes on, and stops at its final int3. Returns 0, 1 when this stub
 * failed and another may do, or a negative code. */
static int vmm_pv_begin_one(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  struct vmm_pv_idle c;
  int rc = vmm_pv_take(&c);
  if (rc != 0) return rc;
  if (ptrace(PTRACE_SEIZE, c.pid, 0, PTRACE_O_EXITKILL | PTRACE_O_TRACESYSGOOD) != 0) {
    VMM_LOG_W("pv: cannot seize sandbox %d: %s", (int)c.pid, strerror(errno));
    vmm_pv_idle_discard(&c);
    return 1;
  }
  int uffd = vmm_pv_recv_hello(c.sock);
  if (uffd == -2) {
    VMM_LOG_W("pv: sandbox %d did not start", (int)c.pid);
    vmm_pv_idle_discard(&c);
    return 1;
  }
  if (vmm_pv_send_maps(vcpu->vm, c.sock) != 0) {
    if (uffd >= 0) close(uffd);
    VMM_LOG_W("pv: sandbox %d did not take its setup message: %s", (int)c.pid, strerror(errno));
    vmm_pv_idle_discard(&c);
    return 1;
  }
  close(c.sock);
  pthread_mutex_lock(&pv->child_lock);
  pv->pid = c.pid;
  pv->tracer = vmm__pv_thread_token();
  pv->pinned_cpu = -1;
  pv->starting = true;
  pv->uffd = uffd;
  pv->uffd_on = false;
  pthread_mutex_unlock(&pv->child_lock);
  return 0;
}

int vmm__pv_child_begin(vmm_vcpu_t *vcpu) {
  for (int attempt = 0; attempt < 3; attempt++) {
    int rc = vmm_pv_begin_one(vcpu);
    if (rc <= 0) return rc;
  }
  VMM_LOG_E("pv: no sandbox process could be started");
  return VMM_EBACKEND;
}

/* Waits for a begun stub to stop at its int3, ready for the guest's registers. Returns 0, 1
 * when the stub died on the way (start another), or a negative code. */
static int vmm_pv_finish(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  pid_t pid = pv->pid;
  int st;
  for (;;) {
    if (vmm__pv_wait(pid, &st) != 0) {
      VMM_LOG_E("pv: lost sandbox %d while it started", (int)pid);
      vmm__pv_child_kill(vcpu);
      return VMM_EBACKEND;
    }
    if (WIFSTOPPED(st) && WSTOPSIG(st) == SIGTRAP && (st >> 16) == 0) break;
    if (WIFSTOPPED(st) && (WSTOPSIG(st) == SIGSTOP || (st >> 16) != 0)) {
      /* A stray stop signal before the int3: drop it. */
      ptrace(PTRACE_CONT, pid, 0, 0);
      continue;
    }
    if (WIFEXITED(st)) {
      VMM_LOG_E("pv: sandbox %d could not start: %s (status %d)", (int)pid,
                vmm_pv_stub_status(WEXITSTATUS(st)), WEXITSTATUS(st));
    } else if (WIFSIGNALED(st)) {
      VMM_LOG_W("pv: sandbox %d died while starting: signal %d (%s)", (int)pid, WTERMSIG(st),
                strsignal(WTERMSIG(st)));
    } else {
      VMM_LOG_E("pv: sandbox %d stopped with signal %d (%s) while starting", (int)pid,
                WSTOPSIG(st), strsignal(WSTOPSIG(st) & 0x7f));
    }
    bool retry = WIFSIGNALED(st);
    if (!WIFEXITED(st) && !WIFSIGNALED(st)) vmm_pv_reap(pid);
    pthread_mutex_lock(&pv->child_lock);
    if (pv->uffd >= 0) close(pv->uffd);
    pv->uffd = -1;
    pv->pid = -1;
    pv->starting = false;
    pthread_mutex_unlock(&pv->child_lock);
    return retry ? 1 : VMM_EBACKEND;
  }
  pthread_mutex_lock(&pv->child_lock);
  pv->starting = false;
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  atomic_store(&pv->pidfd, fd);
  pv->stat_spawns++;
  pv->fresh = true;
  /* The stub mapped clones' RAM from the shared base: the own pages go over it first. */
  pthread_mutex_lock(&pv->remap_lock);
  pv->remap_all = true;
  pv->nremap = 0;
  pthread_mutex_unlock(&pv->remap_lock);
  int uffd = pv->uffd;
  int rc = vmm__pv_dirty_child_init(vcpu, uffd);
  pthread_mutex_unlock(&pv->child_lock);
  if (rc) vmm__pv_child_kill(vcpu);
  return rc;
}

/* Makes the calling thread the tracer of a sandbox stopped at its int3 with guest RAM mapped:
 * the one begun when the vCPU was created, when this thread began it, or a new one. */
int vmm__pv_child_start(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  for (int attempt = 0; attempt < 3; attempt++) {
    if (pv->pid <= 0) {
      int rc = vmm__pv_child_begin(vcpu);
      if (rc) return rc;
    }
    int rc = vmm_pv_finish(vcpu);
    if (rc <= 0) return rc;
  }
  VMM_LOG_E("pv: every sandbox process was killed while it started");
  return VMM_ECHILD;
}

void vmm__pv_child_kill(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  pthread_mutex_lock(&pv->child_lock);
  if (pv->pid > 0 && !pv->starting) vmm__pv_dirty_child_fini(vcpu, true);
  if (pv->starting && pv->uffd >= 0) close(pv->uffd);
  if (pv->starting) pv->uffd = -1;
  pv->starting = false;
  int fd = atomic_exchange(&pv->pidfd, -1);
  if (pv->pid > 0) vmm_pv_reap(pv->pid);
  if (fd >= 0) close(fd);
  pv->pid = -1;
  pv->live = false;
  pv->have_ur = false;
  pv->ur_dirty = false;
  pthread_mutex_unlock(&pv->child_lock);
}

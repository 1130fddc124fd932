/* Snapshot files: round trips, diff files over a parent, hostile files of every kind, and
 * crash safety of the atomic save under SIGKILL. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/internal.h"
#include "core/snapshot.h"
#include "mock_backend.h"

#define RAM (2u << 20)

static char dir[64];

static int group_setup(void **state) {
  (void)state;
  snprintf(dir, sizeof(dir), "/tmp/vmm-snapfile-XXXXXX");
  return mkdtemp(dir) ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  return system(cmd);
}

static vmm_vm_t *make_vm(void) {
  vmm_vm_t *vm = mock_vm_create(RAM);
  vmm_vcpu_t *v;
  assert_int_equal(vmm_vcpu_create(vm, 0, &v), 0);
  vmm_uart_config_t u = VMM_UART_CONFIG_INIT;
  assert_int_equal(vmm_uart_create(vm, &u, NULL), 0);
  return vm;
}

static void guest_write(vmm_vm_t *vm, uint64_t gpa, const void *data, size_t len) {
  void *hva;
  assert_int_equal(vmm_vm_gpa_to_hva(vm, gpa, len, &hva), 0);
  memcpy(hva, data, len);
  for (uint64_t pg = gpa / 4096; pg <= (gpa + len - 1) / 4096; pg++)
    mock_vm_of(vm)->dirty[pg / 64] |= 1ull << (pg % 64);
}

static char *path_of(const char *name) {
  static char p[4][256];
  static int i;
  i = (i + 1) % 4;
  snprintf(p[i], sizeof(p[i]), "%s/%s", dir, name);
  return p[i];
}

static off_t file_size(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 ? st.st_size : -1;
}

static void test_round_trip_full_and_diff(void **state) {
  (void)state;
  vmm_vm_t *vm = make_vm();
  char big[3 * 4096];
  for (size_t i = 0; i < sizeof(big); i++) big[i] = (char)(i * 7);
  guest_write(vm, 0x10000, big, sizeof(big));
  mock_vcpu_of(vm->vcpus[0])->state.regs.rbx = 0xfeedfacecafebeefull;
  mock_vcpu_of(vm->vcpus[0])->state.xsave[100] = 0x5a;
  vmm_snapshot_t *a, *b;
  assert_int_equal(vmm_vm_snapshot(vm, &a), 0);
  assert_int_equal(vmm_snapshot_set_name(a, "base"), 0);
  assert_int_equal(vmm_snapshot_save(a, path_of("a.snap"), 0), 0);
  char small[] = "changed";
  guest_write(vm, 0x11000, small, sizeof(small));
  char zero[4096] = {0};
  guest_write(vm, 0x12000, zero, sizeof(zero)); /* A page set back to zero must be recorded. */
  assert_int_equal(vmm_vm_snapshot(vm, &b), 0);
  assert_int_equal(vmm_snapshot_save(b, path_of("b.snap"), 0), 0);
  assert_true(file_size(path_of("b.snap")) < file_size(path_of("a.snap")));

  vmm_snapshot_t *lb;
  assert_int_equal(vmm_snapshot_load(path_of("b.snap"), &lb), 0);
  vmm_snapshot_info_t ib = VMM_SNAPSHOT_INFO_INIT, lib = VMM_SNAPSHOT_INFO_INIT;
  vmm_snapshot_info(b, &ib);
  vmm_snapshot_info(lb, &lib);
  assert_memory_equal(ib.content_hash, lib.content_hash, 16);
  assert_int_equal(lib.depth, 1);
  assert_string_equal(vmm_snapshot_name(vmm_snapshot_parent(lb)), "base");
  uint8_t x[3 * 4096], y[3 * 4096];
  assert_int_equal(vmm_snapshot_read(b, 0x10000, x, sizeof(x)), 0);
  assert_int_equal(vmm_snapshot_read(lb, 0x10000, y, sizeof(y)), 0);
  assert_memory_equal(x, y, sizeof(x));
  assert_memory_equal(y + 4096, small, sizeof(small));
  for (int i = 0; i < 4096; i++) assert_int_equal(y[2 * 4096 + i], 0);
  vmm_cpu_state_t s1 = VMM_CPU_STATE_INIT, s2 = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_snapshot_cpu_state(b, 0, &s1), 0);
  assert_int_equal(vmm_snapshot_cpu_state(lb, 0, &s2), 0);
  assert_memory_equal(&s1, &s2, sizeof(s1));
  assert_int_equal(s2.regs.rbx, 0xfeedfacecafebeefull);
  assert_int_equal(vmm_snapshot_cpu_state(lb, 1, &s2), VMM_ERANGE);

  /* A loaded snapshot restores into a fresh VM with the same devices. */
  vmm_vm_t *fresh = make_vm();
  assert_int_equal(vmm_vm_restore(fresh, lb), 0);
  uint8_t back[sizeof(small)];
  vmm_vm_read(fresh, 0x11000, back, sizeof(back));
  assert_memory_equal(back, small, sizeof(small));
  assert_int_equal(mock_vcpu_of(fresh->vcpus[0])->state.regs.rbx, 0xfeedfacecafebeefull);
  vmm_vm_t *cl;
  assert_int_equal(vmm_snapshot_clone(lb, NULL, &cl), VMM_ESTATE);

  /* A device state the device refuses (a register beyond a byte) refuses the whole restore
   * before anything changes: RAM and registers stay as the VM had them. */
  guest_write(fresh, 0x11000, "changed", 8);
  mock_vcpu_of(fresh->vcpus[0])->state.regs.rbx = 7;
  cJSON *st = lb->devices[0].state;
  assert_non_null(cJSON_GetObjectItemCaseSensitive(st, "lcr"));
  cJSON_ReplaceItemInObjectCaseSensitive(st, "lcr", cJSON_CreateNumber(300));
  assert_int_equal(vmm_vm_restore(fresh, lb), VMM_ECORRUPT);
  char now[8];
  vmm_vm_read(fresh, 0x11000, now, sizeof(now));
  assert_memory_equal(now, "changed", 8);
  assert_int_equal(mock_vcpu_of(fresh->vcpus[0])->state.regs.rbx, 7);
  vmm_vm_destroy(fresh);

  /* A full save of the child stands alone. */
  assert_int_equal(vmm_snapshot_save(b, path_of("b-full.snap"), VMM_SNAPSHOT_SAVE_FULL), 0);
  vmm_snapshot_t *lf;
  assert_int_equal(vmm_snapshot_load(path_of("b-full.snap"), &lf), 0);
  assert_null(vmm_snapshot_parent(lf));
  assert_int_equal(vmm_snapshot_read(lf, 0x10000, y, sizeof(y)), 0);
  assert_memory_equal(x, y, sizeof(x));

  /* Without the parent file, the diff cannot load. */
  rename(path_of("a.snap"), path_of("a.moved"));
  vmm_snapshot_t *none;
  assert_int_equal(vmm_snapshot_load(path_of("b.snap"), &none), VMM_ENOENT);
  /* A different file under the parent's name is refused by hash. */
  assert_int_equal(vmm_snapshot_save(lf, path_of("a.snap"), VMM_SNAPSHOT_SAVE_FULL), 0);
  assert_int_equal(vmm_snapshot_load(path_of("b.snap"), &none), VMM_ENOENT);
  rename(path_of("a.moved"), path_of("a.snap"));

  /* Saving a child over its parent's own file writes it whole (the diff would name itself). */
  vmm_snapshot_t *a2;
  assert_int_equal(vmm_snapshot_load(path_of("a.snap"), &a2), 0);
  vmm_vm_t *vm2 = make_vm();
  assert_int_equal(vmm_vm_restore(vm2, a2), 0);
  guest_write(vm2, 0x30000, small, sizeof(small));
  vmm_snapshot_t *c2;
  assert_int_equal(vmm_vm_snapshot(vm2, &c2), 0);
  assert_ptr_equal(vmm_snapshot_parent(c2), a2);
  assert_int_equal(vmm_snapshot_save(c2, path_of("a.snap"), 0), 0);
  vmm_snapshot_t *lc;
  assert_int_equal(vmm_snapshot_load(path_of("a.snap"), &lc), 0);
  assert_null(vmm_snapshot_parent(lc));
  vmm_snapshot_release(lc);
  vmm_snapshot_release(c2);
  vmm_snapshot_release(a2);
  vmm_vm_destroy(vm2);

  vmm_snapshot_release(lf);
  vmm_snapshot_release(lb);
  vmm_snapshot_release(b);
  vmm_snapshot_release(a);
  vmm_vm_destroy(vm);
  assert_int_equal(vmm_snapshot_load(path_of("nonexistent"), &none), VMM_EIO);
  assert_int_equal(vmm_snapshot_save(NULL, path_of("x"), 0), VMM_EINVAL);
  assert_int_equal(vmm_snapshot_save(a == NULL ? NULL : NULL, NULL, 0), VMM_EINVAL);
}

static uint8_t *read_file(const char *p, size_t *len) {
  FILE *f = fopen(p, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(*len);
  assert_int_equal(fread(b, 1, *len, f), *len);
  fclose(f);
  return b;
}

static void write_file(const char *p, const void *b, size_t len) {
  FILE *f = fopen(p, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, len, f), len);
  fclose(f);
}

static int quiet_logs;
static void count_logs(vmm_log_level_t l, const char *m, void *ud) {
  (void)l, (void)m, (void)ud;
  quiet_logs++;
}

static void test_every_truncation_and_bit_flip_is_refused(void **state) {
  (void)state;
  vmm_vm_t *vm = make_vm();
  char data[] = "some guest data";
  guest_write(vm, 0x3000, data, sizeof(data));
  vmm_snapshot_t *s;
  assert_int_equal(vmm_vm_snapshot(vm, &s), 0);
  assert_int_equal(vmm_snapshot_save(s, path_of("good.snap"), 0), 0);
  size_t len;
  uint8_t *good = read_file(path_of("good.snap"), &len);
  vmm_log_set_callback(count_logs, VMM_LOG_ERROR, NULL);
  vmm_snapshot_t *out;
  for (size_t n = 0; n < len; n++) {
    write_file(path_of("t.snap"), good, n);
    quiet_logs = 0;
    int rc = vmm_snapshot_load(path_of("t.snap"), &out);
    if (rc != VMM_ECORRUPT) fail_msg("truncation to %zu bytes: rc %d", n, rc);
    assert_null(out);
    assert_true(quiet_logs >= 1); /* Every refusal says why. */
  }
  /* One flipped bit anywhere: header, metadata or page data. */
  uint8_t *bad = malloc(len);
  for (size_t i = 0; i < len; i += (i < 4096 ? 1 : 61)) {
    memcpy(bad, good, len);
    bad[i] ^= (uint8_t)(1u << (i % 8));
    write_file(path_of("t.snap"), bad, len);
    int rc = vmm_snapshot_load(path_of("t.snap"), &out);
    /* Flips in the padding between metadata and data change nothing that is read. */
    size_t meta_end = 64 + *(uint64_t *)(good + 24);
    if (i >= meta_end && i < (meta_end + 4095) / 4096 * 4096) {
      if (rc == 0) vmm_snapshot_release(out);
      continue;
    }
    if (rc != VMM_ECORRUPT && rc != VMM_EVERSION) fail_msg("bit flip at %zu: rc %d", i, rc);
  }
  vmm_log_set_callback(NULL, VMM_LOG_ERROR, NULL);
  free(bad);
  free(good);
  vmm_snapshot_release(s);
  vmm_vm_destroy(vm);
}

/* Writes a file with a valid header around arbitrary metadata (and data), so that what the
 * loader refuses is the content, not the checksums. */
static void craft(const char *p, const char *meta, const void *data, size_t data_len,
                  uint32_t version) {
  size_t mlen = strlen(meta);
  uint64_t data_off = (64 + mlen + 4095) / 4096 * 4096;
  uint8_t *f = calloc(1, data_off + data_len);
  memcpy(f, "LVMMSNAP", 8);
  uint32_t hs = 64;
  uint64_t v64[5] = {64, mlen, data_off, data_len, data_off + data_len};
  memcpy(f + 8, &version, 4);
  memcpy(f + 12, &hs, 4);
  memcpy(f + 16, v64, sizeof(v64));
  uint32_t mc = XXH32(meta, mlen, 0);
  memcpy(f + 56, &mc, 4);
  uint32_t hc = XXH32(f, 60, 0);
  memcpy(f + 60, &hc, 4);
  memcpy(f + 64, meta, mlen);
  if (data_len) memcpy(f + data_off, data, data_len);
  write_file(p, f, data_off + data_len);
  free(f);
}

static const char *vcpu_json(void) {
  static char buf[16384];
  vmm_cpu_state_t st;
  memset(&st, 0, sizeof(st));
  st.struct_size = sizeof(st);
  cJSON *j = vmm__cpu_state_to_json(&st);
  char *t = cJSON_PrintUnformatted(j);
  snprintf(buf, sizeof(buf), "%s", t);
  free(t);
  cJSON_Delete(j);
  return buf;
}

static int load_crafted(const char *meta_fmt, const char *a, uint32_t version) {
  char meta[32768];
  snprintf(meta, sizeof(meta), meta_fmt, a ? a : "");
  uint8_t page[4096] = {1};
  uint64_t check = XXH3_64bits(page, sizeof(page));
  char m2[33000];
  /* @CHECK@ in the template becomes the checksum of the one data page. */
  char *c = strstr(meta, "@CHECK@");
  if (c) {
    *c = 0;
    snprintf(m2, sizeof(m2), "%s0x%llx%s", meta, (unsigned long long)check, c + 7);
  } else {
    snprintf(m2, sizeof(m2), "%s", meta);
  }
  craft(path_of("c.snap"), m2, page, sizeof(page), version);
  vmm_snapshot_t *s = NULL;
  int rc = vmm_snapshot_load(path_of("c.snap"), &s);
  vmm_snapshot_release(s);
  return rc;
}

#define HEAD "{\"format\":1,\"library\":\"0\",\"name\":\"x\",\"backend\":\"bt\",\"hypercall_page\":\"0x0\"," \
             "\"exc_stubs\":\"0x0\","

static void test_hostile_metadata(void **state) {
  (void)state;
  vmm_log_set_callback(count_logs, VMM_LOG_ERROR, NULL);
  const char *ok_tail =
      "\"parent\":null,\"vcpus\":[%s],\"devices\":[],\"regions\":[{\"gpa\":\"0x0\",\"size\":\"0x200000\","
      "\"flags\":0,\"full\":true}],\"chunks\":[{\"region\":0,\"page\":\"0x10\",\"count\":1,"
      "\"offset\":\"0x0\",\"check\":\"@CHECK@\"}]}";
  char fmt[4096];
  snprintf(fmt, sizeof(fmt), HEAD "%s", ok_tail);
  assert_int_equal(load_crafted(fmt, vcpu_json(), 1), 0); /* The template itself is good. */
  assert_int_equal(load_crafted(fmt, vcpu_json(), 2), VMM_EVERSION);

  struct {
    const char *what, *from, *to;
    int expect;
  } cases[] = {
      {"page past region", "\"page\":\"0x10\"", "\"page\":\"0x200\"", VMM_ECORRUPT},
      {"count overflow", "\"count\":1", "\"count\":1e300", VMM_ECORRUPT},
      {"negative count", "\"count\":1", "\"count\":-1", VMM_ECORRUPT},
      {"region index", "\"region\":0", "\"region\":7", VMM_ECORRUPT},
      {"offset past data", "\"offset\":\"0x0\"", "\"offset\":\"0x1000\"", VMM_ECORRUPT},
      {"bad checksum", "@CHECK@", "0x1234", VMM_ECORRUPT},
      {"huge region", "\"size\":\"0x200000\"", "\"size\":\"0x100000000000000\"", VMM_ELIMIT},
      {"unaligned region", "\"size\":\"0x200000\"", "\"size\":\"0x200001\"", VMM_ECORRUPT},
      {"wrapping region", "\"gpa\":\"0x0\"", "\"gpa\":\"0xfffffffffffff000\"", VMM_ECORRUPT},
      {"no parent, diff layer", "\"full\":true", "\"full\":false", VMM_ECORRUPT},
      {"unknown backend", "\"backend\":\"bt\"", "\"backend\":\"xen\"", VMM_ECORRUPT},
      {"hex with junk", "\"gpa\":\"0x0\"", "\"gpa\":\"0xg0\"", VMM_ECORRUPT},
      {"too many devices", "\"devices\":[]", "\"devices\":{}", VMM_ECORRUPT},
      {"device type", "\"devices\":[]", "\"devices\":[{\"type\":7,\"version\":1,\"state\":null}]", VMM_ECORRUPT},
      {"parent missing", "\"parent\":null",
       "\"parent\":{\"hash\":\"00000000000000000000000000000000\",\"file\":\"nope.snap\"}", VMM_ENOENT},
      {"parent elsewhere", "\"parent\":null",
       "\"parent\":{\"hash\":\"00000000000000000000000000000000\",\"file\":\"/etc/x.snap\"}", VMM_ECORRUPT},
      {"parent is itself", "\"parent\":null",
       "\"parent\":{\"hash\":\"zz\",\"file\":\"c.snap\"}", VMM_ECORRUPT},
      {"not json", "\"format\":1", "\"format\":1,,,", VMM_ECORRUPT},
      {"vcpus not a list", "\"vcpus\":[%s]", "\"vcpus\":7%s", VMM_ECORRUPT},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char f2[8192];
    const char *at = strstr(fmt, cases[i].from);
    assert_non_null(at);
    snprintf(f2, sizeof(f2), "%.*s%s%s", (int)(at - fmt), fmt, cases[i].to, at + strlen(cases[i].from));
    quiet_logs = 0;
    int rc = load_crafted(f2, vcpu_json(), 1);
    if (rc != cases[i].expect) fail_msg("%s: rc %d, want %d", cases[i].what, rc, cases[i].expect);
    assert_true(quiet_logs >= 1);
  }
  /* A cycle of two diff files naming each other, with made-up hashes. */
  const char *cyc = HEAD "\"parent\":{\"hash\":\"%s\",\"file\":\"%s\"},\"vcpus\":[],\"devices\":[],"
                         "\"regions\":[{\"gpa\":\"0x0\",\"size\":\"0x200000\",\"flags\":0,\"full\":false}],"
                         "\"chunks\":[]}";
  char m[2048];
  snprintf(m, sizeof(m), cyc, "11111111111111111111111111111111", "q.snap");
  craft(path_of("p.snap"), m, NULL, 0, 1);
  snprintf(m, sizeof(m), cyc, "22222222222222222222222222222222", "p.snap");
  craft(path_of("q.snap"), m, NULL, 0, 1);
  vmm_snapshot_t *s = NULL;
  int rc = vmm_snapshot_load(path_of("p.snap"), &s);
  assert_true(rc == VMM_ELIMIT || rc == VMM_ENOENT || rc == VMM_ECORRUPT);
  assert_null(s);
  /* Metadata of many tiny values (each costs a parsed node): refused before parsing. */
  size_t n = 3u << 20;
  char *pad = malloc(n * 2 + 256);
  assert_non_null(pad);
  size_t at = (size_t)snprintf(pad, 256, HEAD "\"pad\":[");
  for (size_t i = 0; i < n; i++) {
    pad[at++] = '0';
    pad[at++] = ',';
  }
  memcpy(pad + at, "0]}", 4);
  craft(path_of("pad.snap"), pad, NULL, 0, 1);
  free(pad);
  quiet_logs = 0;
  assert_int_equal(vmm_snapshot_load(path_of("pad.snap"), &s), VMM_ELIMIT);
  assert_true(quiet_logs >= 1);
  assert_null(s);
  vmm_log_set_callback(NULL, VMM_LOG_ERROR, NULL);
}

/* A child process saves one of two snapshots over the same file again and again; it is killed
 * at a random moment; the file must then load as one of the two, complete. */
static void test_crash_safety_under_sigkill(void **state) {
  (void)state;
  vmm_vm_t *vm = make_vm();
  char a[4096], b[4096];
  memset(a, 'A', sizeof(a));
  memset(b, 'B', sizeof(b));
  vmm_snapshot_t *sa, *sb;
  for (int i = 0; i < 64; i++) guest_write(vm, 0x20000 + (uint64_t)i * 4096, a, sizeof(a));
  assert_int_equal(vmm_vm_snapshot(vm, &sa), 0);
  for (int i = 0; i < 64; i++) guest_write(vm, 0x20000 + (uint64_t)i * 4096, b, sizeof(b));
  assert_int_equal(vmm_vm_snapshot(vm, &sb), 0);
  const char *p = path_of("crash.snap");
  assert_int_equal(vmm_snapshot_save(sa, p, VMM_SNAPSHOT_SAVE_FULL), 0);
  srand(12345);
  int trials = getenv("VMM_CRASH_TRIALS") ? atoi(getenv("VMM_CRASH_TRIALS")) : 60;
  int saw[2] = {0, 0};
  for (int t = 0; t < trials; t++) {
    pid_t pid = fork();
    if (pid == 0) {
      for (int k = 0;; k++) vmm_snapshot_save(k % 2 ? sb : sa, p, VMM_SNAPSHOT_SAVE_FULL);
    }
    usleep((useconds_t)(rand() % 20000));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    vmm_snapshot_t *l = NULL;
    int rc = vmm_snapshot_load(p, &l);
    if (rc != 0) fail_msg("trial %d: the file does not load after SIGKILL (rc %d)", t, rc);
    uint8_t c;
    vmm_snapshot_read(l, 0x20000 + 63 * 4096 + 4095, &c, 1);
    assert_true(c == 'A' || c == 'B');
    saw[c == 'B']++;
    vmm_snapshot_release(l);
  }
  /* Temporary files of killed saves are left behind, never the destination torn. */
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "rm -f %s/crash.snap.tmp.*", dir);
  assert_int_equal(system(cmd), 0);
  printf("crash trials: %d, file held A %d times, B %d times\n", trials, saw[0], saw[1]);
  vmm_snapshot_release(sb);
  vmm_snapshot_release(sa);
  vmm_vm_destroy(vm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_full_and_diff),
      cmocka_unit_test(test_every_truncation_and_bit_flip_is_refused),
      cmocka_unit_test(test_hostile_metadata),
      cmocka_unit_test(test_crash_safety_under_sigkill),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

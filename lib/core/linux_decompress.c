/* Host-side decompression of a bzImage's payload (gzip, xz, zstd, lz4 legacy frames) with
 * Debian's libraries. The kernel's build appends the decompressed size as 4 little-endian
 * bytes; the output buffer is exactly that size, checked against a cap before anything is
 * allocated, and a stream that would produce more or less is refused. */
#include <limits.h>
#include <lz4.h>
#include <lzma.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "linux_internal.h"

/* xz kernels use a dictionary of at most 32 MiB; leave room but stay bounded. */
#define VMM_XZ_MEMLIMIT (128ull << 20)
/* lz4 legacy frames hold blocks of at most 8 MiB of output. */
#define VMM_LZ4_LEGACY_MAGIC 0x184c2102u
#define VMM_LZ4_LEGACY_BLOCK (8u << 20)

uint32_t vmm__linux_detect_comp(const uint8_t *p, size_t n) {
  static const struct {
    uint32_t comp;
    uint8_t len;
    uint8_t magic[6];
  } magics[] = {
      {VMM_LINUX_COMP_GZIP, 2, {0x1f, 0x8b}},
      {VMM_LINUX_COMP_XZ, 6, {0xfd, '7', 'z', 'X', 'Z', 0x00}},
      {VMM_LINUX_COMP_ZSTD, 4, {0x28, 0xb5, 0x2f, 0xfd}},
      {VMM_LINUX_COMP_LZ4, 4, {0x02, 0x21, 0x4c, 0x18}},
      {VMM_LINUX_COMP_BZIP2, 3, {'B', 'Z', 'h'}},
      {VMM_LINUX_COMP_LZMA, 3, {0x5d, 0x00, 0x00}},
      {VMM_LINUX_COMP_LZO, 4, {0x89, 'L', 'Z', 'O'}},
  };
  for (size_t i = 0; i < VMM_ARRAY_SIZE(magics); i++)
    if (n >= magics[i].len && memcmp(p, magics[i].magic, magics[i].len) == 0)
      return magics[i].comp;
  return VMM_LINUX_COMP_NONE;
}

const char *vmm__linux_comp_name(uint32_t comp) {
  static const char *const names[] = {"none", "gzip", "xz", "zstd", "lz4", "bzip2", "lzma", "lzo"};
  return comp < VMM_ARRAY_SIZE(names) ? names[comp] : "unknown";
}

bool vmm__linux_can_decompress(uint32_t comp) {
  return comp == VMM_LINUX_COMP_GZIP || comp == VMM_LINUX_COMP_XZ ||
         comp == VMM_LINUX_COMP_ZSTD || comp == VMM_LINUX_COMP_LZ4;
}

static int vmm_corrupt(uint32_t comp, const char *why) {
  VMM_LOG_E("linux: %s payload refused: %s", vmm__linux_comp_name(comp), why);
  return VMM_ECORRUPT;
}

static int vmm_gunzip(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
  /* Both sizes are bounded by VMM_LINUX_MAX_KERNEL_SIZE, so one call with 32-bit counts does. */
  if (n > UINT_MAX || cap > UINT_MAX) return vmm_corrupt(VMM_LINUX_COMP_GZIP, "too large");
  z_stream z;
  memset(&z, 0, sizeof(z));
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return VMM_ENOMEM;
  z.next_in = (Bytef *)in;
  z.avail_in = (uInt)n;
  z.next_out = out;
  z.avail_out = (uInt)cap;
  int zr = inflate(&z, Z_FINISH);
  int rc = 0;
  if (zr == Z_MEM_ERROR) {
    rc = VMM_ENOMEM;
  } else if (zr != Z_STREAM_END) {
    rc = vmm_corrupt(VMM_LINUX_COMP_GZIP,
                     zr == Z_BUF_ERROR && z.avail_out == 0 ? "more data than the declared size"
                     : z.msg                                 ? z.msg
                                                             : "truncated stream");
  } else if (z.avail_out != 0) {
    rc = vmm_corrupt(VMM_LINUX_COMP_GZIP, "less data than the declared size");
  }
  inflateEnd(&z);
  return rc;
}

static int vmm_unxz(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
  lzma_stream s = LZMA_STREAM_INIT;
  lzma_ret r = lzma_stream_decoder(&s, VMM_XZ_MEMLIMIT, 0);
  if (r != LZMA_OK) return r == LZMA_MEM_ERROR ? VMM_ENOMEM : VMM_EBACKEND;
  s.next_in = in;
  s.avail_in = n;
  s.next_out = out;
  s.avail_out = cap;
  r = lzma_code(&s, LZMA_FINISH);
  int rc = 0;
  if (r != LZMA_STREAM_END) {
    const char *why = r == LZMA_MEMLIMIT_ERROR   ? "needs too much memory to decode"
                      : r == LZMA_BUF_ERROR && s.avail_out == 0 ? "more data than the declared size"
                      : r == LZMA_BUF_ERROR      ? "truncated stream"
                      : r == LZMA_FORMAT_ERROR   ? "not an xz stream"
                      : r == LZMA_OPTIONS_ERROR  ? "unsupported xz options"
                      : r == LZMA_DATA_ERROR     ? "corrupt data"
                      : r == LZMA_MEM_ERROR      ? "out of memory"
                                                 : "decoder error";
    rc = r == LZMA_MEM_ERROR ? VMM_ENOMEM : vmm_corrupt(VMM_LINUX_COMP_XZ, why);
  } else if (s.avail_out != 0) {
    rc = vmm_corrupt(VMM_LINUX_COMP_XZ, "less data than the declared size");
  }
  lzma_end(&s);
  return rc;
}

static int vmm_unzstd(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
  ZSTD_DCtx *d = ZSTD_createDCtx();
  if (d == NULL) return VMM_ENOMEM;
  size_t r = ZSTD_decompressDCtx(d, out, cap, in, n);
  ZSTD_freeDCtx(d);
  if (ZSTD_isError(r)) return vmm_corrupt(VMM_LINUX_COMP_ZSTD, ZSTD_getErrorName(r));
  if (r != cap) return vmm_corrupt(VMM_LINUX_COMP_ZSTD, "less data than the declared size");
  return 0;
}

static uint32_t vmm_le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The legacy lz4 format the kernel uses (lz4 -l): a magic, then blocks of a 4-byte compressed
 * size and the data, each decompressing to at most 8 MiB; a magic may start a new stream. */
static int vmm_unlz4(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
  size_t pos = 0, done = 0;
  if (n < 4 || vmm_le32(in) != VMM_LZ4_LEGACY_MAGIC)
    return vmm_corrupt(VMM_LINUX_COMP_LZ4, "no legacy frame magic");
  pos = 4;
  while (n - pos >= 4) {
    uint32_t c = vmm_le32(in + pos);
    pos += 4;
    if (c == VMM_LZ4_LEGACY_MAGIC) continue;
    if (c == 0 || c > n - pos || c > (uint32_t)LZ4_compressBound(VMM_LZ4_LEGACY_BLOCK))
      return vmm_corrupt(VMM_LINUX_COMP_LZ4, "block size outside the payload");
    size_t room = cap - done;
    if (room == 0) return vmm_corrupt(VMM_LINUX_COMP_LZ4, "more data than the declared size");
    int max = (int)(room < VMM_LZ4_LEGACY_BLOCK ? room : VMM_LZ4_LEGACY_BLOCK);
    int got = LZ4_decompress_safe((const char *)in + pos, (char *)out + done, (int)c, max);
    if (got < 0) return vmm_corrupt(VMM_LINUX_COMP_LZ4, "corrupt block (or more data than declared)");
    done += (size_t)got;
    pos += c;
  }
  if (pos != n) return vmm_corrupt(VMM_LINUX_COMP_LZ4, "trailing bytes after the last block");
  if (done != cap) return vmm_corrupt(VMM_LINUX_COMP_LZ4, "less data than the declared size");
  return 0;
}

int vmm__linux_decompress(uint32_t comp, const uint8_t *in, size_t in_size, uint64_t max,
                          uint8_t **out, size_t *out_size) {
  *out = NULL;
  *out_size = 0;
  if (!vmm__linux_can_decompress(comp)) {
    VMM_LOG_E("linux: no host decompressor for %s payloads", vmm__linux_comp_name(comp));
    return VMM_ENOSYS;
  }
  if (in_size < 5) return vmm_corrupt(comp, "shorter than its trailing size");
  uint32_t declared = vmm_le32(in + in_size - 4);
  if (declared == 0) return vmm_corrupt(comp, "declares an empty kernel");
  if (declared > max) {
    VMM_LOG_E("linux: payload declares %u bytes decompressed, more than the limit of %llu",
              declared, (unsigned long long)max);
    return VMM_ELIMIT;
  }
  uint8_t *buf = malloc(declared);
  if (buf == NULL) return VMM_ENOMEM;
  size_t n = in_size - 4;
  int rc;
  switch (comp) {
    case VMM_LINUX_COMP_GZIP: rc = vmm_gunzip(in, n, buf, declared); break;
    case VMM_LINUX_COMP_XZ: rc = vmm_unxz(in, n, buf, declared); break;
    case VMM_LINUX_COMP_ZSTD: rc = vmm_unzstd(in, n, buf, declared); break;
    default: rc = vmm_unlz4(in, n, buf, declared); break;
  }
  if (rc != 0) {
    free(buf);
    return rc;
  }
  *out = buf;
  *out_size = declared;
  return 0;
}

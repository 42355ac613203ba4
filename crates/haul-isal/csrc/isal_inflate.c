/*
 * The few calls haul makes into ISA-L's inflate (Debian's libisal2, what `igzip` runs on).
 *
 * Why C: `struct inflate_state` is allocated by the caller and its layout (unions, enums, table
 * sizes computed by macros) comes from the installed header, so this file is compiled against
 * that header instead of restating the struct in Rust. Why dlopen: the library is optional at
 * run time. A haul binary copied to a machine without libisal2 still runs, and inflates with
 * zlib-rs there; the soname loaded is the major version of the header compiled against, the
 * version whose ABI the struct layout belongs to.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>

#include <isa-l.h>
#include <isa-l/igzip_lib.h>

#define HAUL_STR2(x) #x
#define HAUL_STR(x) HAUL_STR2(x)
#define HAUL_ISAL_SONAME "libisal.so." HAUL_STR(ISAL_MAJOR_VERSION)

static void (*init_fn)(struct inflate_state *);
static void (*reset_fn)(struct inflate_state *);
static int (*inflate_fn)(struct inflate_state *);

const char *haul_isal_soname(void) { return HAUL_ISAL_SONAME; }

/* 1 when the library and its three functions were found. Called once, before any other call. */
int haul_isal_load(void)
{
	void *lib = dlopen(HAUL_ISAL_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!lib)
		return 0;
	init_fn = (void (*)(struct inflate_state *))dlsym(lib, "isal_inflate_init");
	reset_fn = (void (*)(struct inflate_state *))dlsym(lib, "isal_inflate_reset");
	inflate_fn = (int (*)(struct inflate_state *))dlsym(lib, "isal_inflate");
	if (!init_fn || !reset_fn || !inflate_fn) {
		init_fn = NULL;
		reset_fn = NULL;
		inflate_fn = NULL;
		dlclose(lib);
		return 0;
	}
	return 1;
}

/*
 * A state that inflates a gzip member's deflate data, its header already read (by the Rust side:
 * ISA-L's own header parser failed on headers with optional fields arriving a byte at a time),
 * and checks the CRC-32 and length in the trailer.
 */
struct inflate_state *haul_isal_new(void)
{
	struct inflate_state *s = malloc(sizeof *s);
	if (s) {
		init_fn(s);
		s->crc_flag = ISAL_GZIP_NO_HDR_VER;
	}
	return s;
}

/* Ready for the next gzip member, once one has finished. */
void haul_isal_next_member(struct inflate_state *s)
{
	reset_fn(s);
	s->crc_flag = ISAL_GZIP_NO_HDR_VER;
}

/*
 * Inflates from `in` into `out`: returns ISA-L's code (negative for bad data) and says how much
 * input was used, how much output made, and whether the member (trailer included) has ended.
 */
int haul_isal_inflate(struct inflate_state *s, const uint8_t *in, uint32_t in_len, uint8_t *out,
		      uint32_t out_len, uint32_t *in_used, uint32_t *out_made, int *finished)
{
	s->next_in = (uint8_t *)in;
	s->avail_in = in_len;
	s->next_out = out;
	s->avail_out = out_len;
	int ret = inflate_fn(s);
	*in_used = in_len - s->avail_in;
	*out_made = out_len - s->avail_out;
	*finished = s->block_state == ISAL_BLOCK_FINISH;
	return ret;
}

void haul_isal_free(struct inflate_state *s) { free(s); }

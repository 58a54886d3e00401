// Prints where each source line of loaded BPF programs begins in their JITed code, for
// bench/perf-lines.ts (perf samples of the programs by source line). This machine's bpftool has
// no disassembler (no libbfd), so `bpftool prog dump jited ... linum` cannot tell it.
//   cc -O2 -Wall -o bpf-line-table bench/bpf-line-table.c -lbpf && ./bpf-line-table PROG_ID...
// Output, one record per line:
//   PROG <id> <name> <the program's kernel address, hex>
//   LINE <address, hex> <line number> <file> <source text>
// The addresses are kernel addresses (the JITed image, as perf reports them); a program's
// subprograms are in the same records. Needs root (CAP_SYS_ADMIN for the programs' info).
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int dump(__u32 id)
{
	int fd = bpf_prog_get_fd_by_id(id);
	if (fd < 0) {
		fprintf(stderr, "bpf-line-table: program %u: %s\n", id, strerror(errno));
		return -1;
	}
	struct bpf_prog_info info;
	__u32 len = sizeof(info);
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) {
		fprintf(stderr, "bpf-line-table: program %u info: %s\n", id, strerror(errno));
		close(fd);
		return -1;
	}
	__u32 lines = info.nr_line_info, jited = info.nr_jited_line_info, rec = info.line_info_rec_size, btf_id = info.btf_id;
	__u32 ksyms = info.nr_jited_ksyms;
	char name[sizeof(info.name) + 1];
	memcpy(name, info.name, sizeof(info.name));
	name[sizeof(info.name)] = 0;
	if (lines == 0 || jited != lines || rec < sizeof(struct bpf_line_info) || ksyms == 0) {
		fprintf(stderr, "bpf-line-table: program %u (%s) has no JITed line info\n", id, name);
		close(fd);
		return -1;
	}
	void *line_info = calloc(lines, rec);
	__u64 *addresses = calloc(jited, sizeof(__u64));
	__u64 *symbols = calloc(ksyms, sizeof(__u64));
	if (!line_info || !addresses || !symbols) {
		fprintf(stderr, "bpf-line-table: out of memory\n");
		exit(1);
	}
	memset(&info, 0, sizeof(info));
	info.nr_line_info = lines;
	info.line_info_rec_size = rec;
	info.line_info = (__u64)(unsigned long)line_info;
	info.nr_jited_line_info = jited;
	info.jited_line_info_rec_size = sizeof(__u64);
	info.jited_line_info = (__u64)(unsigned long)addresses;
	info.nr_jited_ksyms = ksyms;
	info.jited_ksyms = (__u64)(unsigned long)symbols;
	len = sizeof(info);
	int err = bpf_obj_get_info_by_fd(fd, &info, &len);
	close(fd);
	struct btf *btf = err == 0 ? btf__load_from_kernel_by_id(btf_id) : NULL;
	if (err != 0 || btf == NULL) {
		fprintf(stderr, "bpf-line-table: program %u (%s): its line info or BTF: %s\n", id, name, strerror(errno));
		free(line_info);
		free(addresses);
		free(symbols);
		return -1;
	}
	/* The main program's symbol is the first (its subprograms' follow). */
	printf("PROG %u %s %llx\n", id, name, (unsigned long long)symbols[0]);
	for (__u32 i = 0; i < lines; i++) {
		const struct bpf_line_info *l = (const void *)((const char *)line_info + (size_t)i * rec);
		const char *file = btf__name_by_offset(btf, l->file_name_off);
		const char *text = btf__name_by_offset(btf, l->line_off);
		const char *base = file ? strrchr(file, '/') : NULL;
		printf("LINE %llx %u %s ", (unsigned long long)addresses[i], BPF_LINE_INFO_LINE_NUM(l->line_col),
		       base ? base + 1 : (file ? file : "?"));
		/* The source text on one line: tabs and newlines as spaces. */
		for (const char *c = text ? text : ""; *c; c++)
			putchar(*c == '\t' || *c == '\n' ? ' ' : *c);
		putchar('\n');
	}
	btf__free(btf);
	free(line_info);
	free(addresses);
	free(symbols);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: bpf-line-table PROG_ID...\n");
		return 2;
	}
	int failed = 0;
	for (int i = 1; i < argc; i++) {
		char *end;
		unsigned long id = strtoul(argv[i], &end, 10);
		if (*argv[i] == 0 || *end != 0 || id == 0 || id > 0xffffffffUL) {
			fprintf(stderr, "bpf-line-table: %s is not a program id\n", argv[i]);
			return 2;
		}
		failed |= dump((__u32)id) != 0;
	}
	return failed;
}

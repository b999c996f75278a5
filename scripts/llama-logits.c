// llama.cpp's logits at every position of a token sequence, so that a test can set spectra's
// against them on the same GGUF file: `llama-logits MODEL TOKEN...` prints one line per position,
// its logits separated by spaces. The KV cache is f32 (llama.cpp's default f16 would round keys and
// values before attention, which spectra's f32 cache does not). Built by `scripts/llama-cpp.sh
// llama-logits`, against the same static llama.cpp as the other comparisons.
#include <stdio.h>
#include <stdlib.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *data) {
    (void)data;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL TOKEN...\n", argv[0]);
        return 2;
    }
    int n = argc - 2;
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "llama.cpp could not load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n < 64 ? 64 : n;
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "llama.cpp could not make a context for %s\n", argv[1]);
        return 1;
    }
    int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        char *end;
        long token = strtol(argv[2 + i], &end, 10);
        if (*end || token < 0 || token >= vocab) {
            fprintf(stderr, "token `%s` is not an id below the vocabulary's %d\n", argv[2 + i], vocab);
            return 2;
        }
        batch.token[i] = (llama_token)token;
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        const float *logits = llama_get_logits_ith(ctx, i);
        for (int j = 0; j < vocab; j++) printf(j ? " %.9g" : "%.9g", logits[j]);
        putchar('\n');
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}

// dreamllm: the command-line front end. Subcommands arrive as the pipelines land; today the engine demo.
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <new>
#include <string>

#include "core/error.h"
#include "core/thread_pool.h"

namespace dl::app {
int demo_main(int argc, char** argv);
int run_main(int argc, char** argv);
int inspect_main(int argc, char** argv);
int bench_main(int argc, char** argv);
int ask_main(int argc, char** argv);
int chat_main(int argc, char** argv);
int create_main(int argc, char** argv);
int write_main(int argc, char** argv);
int train_main(int argc, char** argv);
int world_main(int argc, char** argv);
int convert_main(int argc, char** argv);
int serve_main(int argc, char** argv);
}

namespace {

void usage(FILE* out) {
  std::fprintf(out,
               "usage: dreamllm <command> [options]\n"
               "\n"
               "commands:\n"
               "  inspect show a model's components, sizes and the memory each weight type needs (headers only):\n"
               "                                                dreamllm inspect -m MODEL [--json]\n"
               "  bench   speed of the LLM, vision tower, UNet or VAE (llama-bench style, --json):\n"
               "                                                dreamllm bench llm -m MODEL -p 512 -n 64 -t 1,2\n"
               "  ask     answer a question about images:       dreamllm ask -m MODEL -i photo.png -p \"What is it?\"\n"
               "  chat    chat, attaching images with /image:   dreamllm chat -m MODEL\n"
               "  create  draw images from a prompt:            dreamllm create -m MODEL -p \"a large red circle at the top left\" -o out.png\n"
               "  write   write a document with images that the model places itself:\n"
               "                                                dreamllm write -m MODEL -p \"Write a story\" -o doc.html\n"
               "  train   train a stage (I-a, I-b, II, III) on data files:\n"
               "                                                dreamllm train --stage II -m MODEL --data docs.jsonl -o out\n"
               "  world   the shapes world: generate data, score pictures against descriptions:\n"
               "                                                dreamllm world gen -o data --train 10000 --test 500\n"
               "  convert convert a model directory to GGUF (the LLM as a llama.cpp model, the rest beside it):\n"
               "                                                dreamllm convert -m MODEL -o model.gguf --type q4_k_m\n"
               "  serve   an OpenAI-compatible HTTP server with a web page (chat with images, drawing, documents):\n"
               "                                                dreamllm serve -m MODEL --port 8080\n"
               "  run     run one model component on tensors from a safetensors file (parity checks)\n"
               "  demo    train a tiny causal transformer from scratch with the engine's autograd and show\n"
               "          it learning to reverse digit sequences (runs in seconds on a CPU)\n"
               "\n"
               "  --version                                     the commit this program was built from\n"
               "\n"
               "exit codes: 0 success, 1 error in the inputs, files or model, 2 bad usage, 3 internal error\n"
               "\n"
               "Run 'dreamllm <command> --help' for the options of a command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "-V"))) {
    // The commit as of configuring the build tree (as bench records name it), and the compiler.
    std::printf("dreamllm.cpp, commit %s, built with %s\n", DL_BUILD_COMMIT[0] ? DL_BUILD_COMMIT : "unknown",
                __VERSION__);
    return 0;
  }
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "demo") return dl::app::demo_main(argc - 1, argv + 1);
    if (cmd == "run") return dl::app::run_main(argc - 1, argv + 1);
    if (cmd == "inspect") return dl::app::inspect_main(argc - 1, argv + 1);
    if (cmd == "bench") return dl::app::bench_main(argc - 1, argv + 1);
    if (cmd == "ask") return dl::app::ask_main(argc - 1, argv + 1);
    if (cmd == "chat") return dl::app::chat_main(argc - 1, argv + 1);
    if (cmd == "create") return dl::app::create_main(argc - 1, argv + 1);
    if (cmd == "write") return dl::app::write_main(argc - 1, argv + 1);
    if (cmd == "train") return dl::app::train_main(argc - 1, argv + 1);
    if (cmd == "world") return dl::app::world_main(argc - 1, argv + 1);
    if (cmd == "convert") return dl::app::convert_main(argc - 1, argv + 1);
    if (cmd == "serve") return dl::app::serve_main(argc - 1, argv + 1);
    std::fprintf(stderr, "dreamllm: unknown command '%s'\n\n", cmd.c_str());
    usage(stderr);
    return 2;
  } catch (const dl::Error& e) {
    std::fprintf(stderr, "dreamllm %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    // A path the user gave that cannot be used (a symlink loop, no permission, not a directory): an input error.
    std::fprintf(stderr, "dreamllm %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "dreamllm %s: error: out of memory (the inputs or options need more memory than this "
                 "process may use)\n", cmd.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dreamllm %s: internal error (a bug: please report it with the command line): %s\n",
                 cmd.c_str(), e.what());
    return 3;
  }
}

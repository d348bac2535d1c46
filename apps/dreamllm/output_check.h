// Refusing, before any work, an output that would destroy something: a device, FIFO, socket or directory in its
// place (io::output_target), a file the same command reads (an input image, the model's weights), or another
// output of the same command. Files are compared by identity (device and inode, after symbolic links), so another
// spelling of the same path, a symbolic link or a hard link to an input is caught as well.
#pragma once
#include <sys/types.h>

#include <string>
#include <vector>

namespace dl::app {

// Throws dl::Error naming the output when the directory it would be written in is missing, not a directory or not
// writable: found before the model is read and the work is done, not when the first file is written.
void check_output_directory(const std::string& output);

class InputFiles {
 public:
  // A file the command reads; one that does not exist is not read and is skipped.
  void add(const std::string& path);
  // Every file under a directory (the model directory): weights, configs, tokenizer.
  void add_tree(const std::string& dir);
  // Throws dl::Error naming the problem when `outputs` cannot be written without harm, or cannot be written at
  // all (check_output_directory).
  void check_outputs(const std::vector<std::string>& outputs) const;

 private:
  struct File {
    dev_t dev;
    ino_t ino;
    std::string path;
  };
  std::vector<File> files_;
};

}  // namespace dl::app

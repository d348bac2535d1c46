// io::write_file_atomically and io::AtomicFile: only regular files are replaced (devices, FIFOs, sockets and
// directories are refused and left as they were), symbolic links are written through, two writers of one path
// never share a temporary file, and permissions follow the file replaced (or the umask).
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "test_util.h"

namespace dl {
namespace {

namespace fs = std::filesystem;
using test::error_of;
using test::slurp;

struct Dir {
  fs::path dir = fs::temp_directory_path() / ("dl_atomic_" + std::to_string(getpid()));
  Dir() {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~Dir() { fs::remove_all(dir); }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
  // Names in the directory, to see that nothing (no temporary file) was left behind.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& e : fs::directory_iterator(dir)) n.push_back(e.path().filename().string());
    std::sort(n.begin(), n.end());
    return n;
  }
};

// "'path'", built by appending: GCC 12 warns falsely (-Wrestrict) on "'" + string + "...".
std::string quoted(const std::string& path) {
  std::string q(1, '\'');
  q += path;
  q += '\'';
  return q;
}

void write(const std::string& path, const std::string& text) {
  io::write_file_atomically(path, [&](std::ostream& o) { o << text; });
}

TEST(AtomicFile, RefusesAFifoADirectoryAndASocketLeavingThem) {
  Dir d;
  ASSERT_EQ(mkfifo((d / "pipe").c_str(), 0644), 0);
  EXPECT_NE(error_of([&] { write(d / "pipe", "x"); }).find(quoted(d / "pipe") + " is a FIFO; choose a "
                                                           "regular file"),
            std::string::npos);
  EXPECT_TRUE(fs::is_fifo(d / "pipe"));
  fs::create_directories(d / "sub");
  EXPECT_NE(error_of([&] { write(d / "sub", "x"); }).find("is a directory; choose a regular file"), std::string::npos);
  EXPECT_TRUE(fs::is_directory(d / "sub"));
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string sock = d / "sock";
  ASSERT_LT(sock.size(), sizeof addr.sun_path);
  std::copy(sock.begin(), sock.end(), addr.sun_path);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_NE(error_of([&] { write(sock, "x"); }).find("is a socket"), std::string::npos);
  EXPECT_TRUE(fs::is_socket(sock));
  close(fd);
  EXPECT_EQ(d.names(), (std::vector<std::string>{"pipe", "sock", "sub"}));
}

TEST(AtomicFile, RefusesADeviceEvenThroughALink) {
  Dir d;
  // /dev/null exists everywhere; replacing it needs root, so without root the old code failed only at the rename.
  ASSERT_EQ(symlink("/dev/null", (d / "null").c_str()), 0);
  EXPECT_NE(error_of([&] { write(d / "null", "x"); })
                .find("is a symbolic link to '/dev/null', a character device; choose a regular file"),
            std::string::npos);
  EXPECT_TRUE(fs::is_symlink(d / "null"));
  // A device node of our own (the one /dev/full is), so that a regression replaces nothing of the system's.
  if (geteuid() == 0 && mknod((d / "full").c_str(), S_IFCHR | 0666, makedev(1, 7)) == 0) {
    EXPECT_NE(error_of([&] { write(d / "full", "x"); }).find(quoted(d / "full") + " is a character device"),
              std::string::npos);
    EXPECT_TRUE(fs::is_character_file(d / "full"));
  }
  for (const std::string& name : d.names()) EXPECT_NE(name[0], '.') << name;  // no temporary file left
}

TEST(AtomicFile, WritesThroughASymbolicLink) {
  Dir d;
  fs::create_directories(d / "real");
  write(d / "real/file.txt", "old");
  ASSERT_EQ(symlink("real/file.txt", (d / "link").c_str()), 0);  // relative, as links usually are
  ASSERT_EQ(symlink("link", (d / "link2").c_str()), 0);           // and a chain
  write(d / "link2", "new");
  EXPECT_TRUE(fs::is_symlink(d / "link"));
  EXPECT_TRUE(fs::is_symlink(d / "link2"));
  EXPECT_EQ(slurp(d / "real/file.txt"), "new");
  // A dangling link: the file it names is created.
  ASSERT_EQ(symlink("real/made.txt", (d / "dangling").c_str()), 0);
  write(d / "dangling", "made");
  EXPECT_TRUE(fs::is_symlink(d / "dangling"));
  EXPECT_EQ(slurp(d / "real/made.txt"), "made");
  // A loop is an error, not a hang.
  ASSERT_EQ(symlink("loop_b", (d / "loop_a").c_str()), 0);
  ASSERT_EQ(symlink("loop_a", (d / "loop_b").c_str()), 0);
  EXPECT_NE(error_of([&] { write(d / "loop_a", "x"); }).find("symbolic links (a loop?)"), std::string::npos);
}

TEST(AtomicFile, TwoWritersOfOnePathDoNotShareATemporaryFile) {
  Dir d;
  io::AtomicFile a(d / "out.txt"), b(d / "out.txt");
  a.stream() << "from a, which is longer";
  b.stream() << "from b";
  a.commit();
  EXPECT_EQ(slurp(d / "out.txt"), "from a, which is longer");
  b.commit();
  EXPECT_EQ(slurp(d / "out.txt"), "from b");
  EXPECT_EQ(d.names(), std::vector<std::string>{"out.txt"});
  // One abandoned before commit() leaves the file as it was, and no temporary file.
  {
    io::AtomicFile c(d / "out.txt");
    c.stream() << "abandoned";
  }
  EXPECT_NE(error_of([&] {
              io::write_file_atomically(d / "out.txt", [](std::ostream& o) {
                o << "half";
                fail("the body failed");
              });
            }),
            "no error");
  EXPECT_EQ(slurp(d / "out.txt"), "from b");
  EXPECT_EQ(d.names(), std::vector<std::string>{"out.txt"});
}

TEST(AtomicFile, PermissionsFollowTheReplacedFileOrTheUmask) {
  Dir d;
  const mode_t mask = umask(0);
  umask(mask);
  write(d / "new.txt", "x");
  struct stat st {};
  ASSERT_EQ(stat((d / "new.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0666u & ~mask);  // not mkstemp's 0600
  ASSERT_EQ(chmod((d / "new.txt").c_str(), 0640), 0);
  write(d / "new.txt", "y");
  ASSERT_EQ(stat((d / "new.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
}

}  // namespace
}  // namespace dl

// liburing.h sets _XOPEN_SOURCE/_GNU_SOURCE; include these first so fd_set and friends agree
// across modules.
#include <sys/select.h>
#include <sys/socket.h>
#include <signal.h>
#include <liburing.h>

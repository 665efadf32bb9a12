// libshoal's C header, as a module: ShoalCABI implements these declarations in Swift
// (@_cdecl) with the header's own struct types, so the two cannot drift apart.
#include "shoal.h"

#include "rl_glob.h"

int rl_glob_match(const char *p, const char *s, size_t len)
{
    size_t i = 0, star_s = 0;
    const char *star_p = NULL;
    while (i < len) {
        if (*p == '*') {
            star_p = ++p;
            star_s = i;
        } else if (*p && *p == s[i]) {
            p++;
            i++;
        } else if (star_p) {
            p = star_p;
            i = ++star_s;
        } else {
            return 0;
        }
    }
    while (*p == '*')
        p++;
    return *p == '\0';
}

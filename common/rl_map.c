/* A string-keyed hash map (open addressing, linear probing) of borrowed values. */
#include "rl_map.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static char tomb_marker;
#define RL_MAP_TOMB (&tomb_marker)

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

void rl_map_init(rl_map *m) { memset(m, 0, sizeof *m); }

void rl_map_init_borrowed(rl_map *m)
{
    rl_map_init(m);
    m->borrow = 1;
}

void rl_map_close(rl_map *m)
{
    int borrow = m->borrow;
    for (size_t i = 0; i < m->cap && !borrow; i++)
        if (m->slots[i].key && m->slots[i].key != RL_MAP_TOMB)
            free(m->slots[i].key);
    free(m->slots);
    rl_map_init(m);
    m->borrow = borrow;
}

static rl_map_slot *find(const rl_map *m, const char *key)
{
    if (m->cap == 0)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = hash(key) & mask;; i = (i + 1) & mask) {
        rl_map_slot *s = &m->slots[i];
        if (s->key == NULL)
            return NULL;
        if (s->key != RL_MAP_TOMB && strcmp(s->key, key) == 0)
            return s;
    }
}

void *rl_map_get(const rl_map *m, const char *key)
{
    rl_map_slot *s = find(m, key);
    return s ? s->val : NULL;
}

static int grow(rl_map *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 16;
    if (m->len * 4 < m->cap) /* mostly tombstones: rehash at the same size */
        ncap = m->cap;
    rl_map_slot *ns = calloc(ncap, sizeof *ns);
    if (!ns)
        return -ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        rl_map_slot *s = &m->slots[i];
        if (!s->key || s->key == RL_MAP_TOMB)
            continue;
        size_t j = hash(s->key) & (ncap - 1);
        while (ns[j].key)
            j = (j + 1) & (ncap - 1);
        ns[j] = *s;
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    m->used = m->len;
    return 0;
}

int rl_map_set(rl_map *m, const char *key, void *val)
{
    rl_map_slot *s = find(m, key);
    if (s) {
        s->val = val;
        return 0;
    }
    if ((m->used + 1) * 4 >= m->cap * 3 && grow(m) < 0)
        return -ENOMEM;
    char *k = m->borrow ? (char *)key : strdup(key);
    if (!k)
        return -ENOMEM;
    size_t mask = m->cap - 1;
    size_t i = hash(key) & mask;
    while (m->slots[i].key && m->slots[i].key != RL_MAP_TOMB)
        i = (i + 1) & mask;
    if (!m->slots[i].key)
        m->used++;
    m->slots[i].key = k;
    m->slots[i].val = val;
    m->len++;
    return 0;
}

void *rl_map_del(rl_map *m, const char *key)
{
    rl_map_slot *s = find(m, key);
    if (!s)
        return NULL;
    void *v = s->val;
    if (!m->borrow)
        free(s->key);
    s->key = RL_MAP_TOMB;
    s->val = NULL;
    m->len--;
    return v;
}

int rl_map_next(const rl_map *m, size_t *iter, const char **key, void **val)
{
    for (; *iter < m->cap; (*iter)++) {
        rl_map_slot *s = &m->slots[*iter];
        if (s->key && s->key != RL_MAP_TOMB) {
            if (key)
                *key = s->key;
            if (val)
                *val = s->val;
            (*iter)++;
            return 1;
        }
    }
    return 0;
}

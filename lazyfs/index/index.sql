-- The merged overlay index of one image. Written once by MergedIndex.build,
-- then only read (immutable), possibly by several processes at once.
-- Names, link targets and xattr names are BLOBs: tar names need not be UTF-8.

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value ANY
) WITHOUT ROWID;

-- One row per inode; ino is the row id, handed to FUSE as the inode number.
CREATE TABLE inodes (
    ino INTEGER PRIMARY KEY,
    type INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    rdev INTEGER NOT NULL,
    linkname BLOB NOT NULL,
    layer INTEGER NOT NULL,
    data BLOB NOT NULL,
    has_xattrs INTEGER NOT NULL
);

-- One row per name; hardlinks are several rows with one ino. The file never
-- changes, so a position in (parent, name) order is a stable readdir offset.
CREATE TABLE dirents (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;

CREATE TABLE xattrs (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;

-- Per-layer views (overlayfs lowerdir form), bottom layer first.
CREATE TABLE layer_roots (
    pos INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    ino INTEGER NOT NULL
);

-- @indexes
-- Created after the bulk load.
-- path_of: from an inode back to a name and its parent.
CREATE INDEX dirents_by_ino ON dirents (ino);

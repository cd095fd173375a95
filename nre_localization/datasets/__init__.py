"""Dataset readers (COLMAP, TUM, 7-Scenes, rosbags): each returns a source-independent Scene."""

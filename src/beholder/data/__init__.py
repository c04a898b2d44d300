"""Data: parse the AVA labels, download the images, prepare them (validate, measure, resize) into a manifest.

``beholder.data.ava`` parses AVA.txt, the official lists and the splits; ``beholder.data.labels``
reads a CSV of your own ratings; ``beholder.data.prepare`` is the one pipeline both feed;
``beholder.data.manifest`` the manifest's contract and reader; ``beholder.data.download`` the polite,
resumable downloader. See docs/data.md for the files they write.
"""

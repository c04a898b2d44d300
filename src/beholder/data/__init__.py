"""AVA data: parse the labels, download the images, validate/measure/resize them into a manifest.

``beholder.data.ava`` holds parsing, splits and ``prepare``; ``beholder.data.download`` the polite,
resumable downloader. See docs/data.md for the files they write.
"""
